"""The openai backend: any OpenAI-compatible server (trtllm-serve, vLLM, SGLang, llama.cpp's server) over HTTP.

Chat completions, whole or streamed (server-sent events). A JSON schema travels in `response_format`, in one
of the two dialects servers accept (`openai_schema_format`). HTTP and network failures become EngineErrors
with the server's own message, so the caller gets a clear error reply.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.gateway.engine import (
    Completion,
    EngineError,
    StreamItem,
    collect,
    estimate_tokens,
    parse_json_output,
)
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest

SSE_DATA = "data:"
SSE_DONE = "[DONE]"
SCHEMA_NAME = "output"
MAX_SERVER_MESSAGE_CHARS = 500


def response_format(schema: dict[str, Any], dialect: str) -> dict[str, Any]:
    """`response_format` for a JSON schema: OpenAI's json_schema form, or llama.cpp's json_object form."""
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}


def server_message(response: httpx.Response) -> str:
    """The error text of a failed call: OpenAI's error.message, FastAPI's detail, or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_SERVER_MESSAGE_CHARS] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:MAX_SERVER_MESSAGE_CHARS]
        if isinstance(error, str):
            return error[:MAX_SERVER_MESSAGE_CHARS]
        if body.get("detail"):
            return str(body["detail"])[:MAX_SERVER_MESSAGE_CHARS]
    return json.dumps(body)[:MAX_SERVER_MESSAGE_CHARS]


def http_error(status: int, message: str) -> EngineError:
    """An HTTP failure, worded for the caller."""
    if status in (401, 403):
        return EngineError(f"openai server refused the gateway's credentials (HTTP {status}): {message}")
    if status == 429:
        return EngineError(f"openai server is rate limiting (HTTP 429): {message}")
    if status >= 500:
        return EngineError(f"openai server failed (HTTP {status}): {message}")
    return EngineError(f"openai server rejected the request (HTTP {status}): {message}")


class StreamEndedEarly(EngineError):
    """The server closed a stream half-way (its error, if any, went to its log)."""

    def __init__(self, deltas: int) -> None:
        super().__init__(f"openai server ended the stream early, after {deltas} deltas")
        self.deltas = deltas


class OpenAIEngine:
    """Chat completions from an OpenAI-compatible server, through one pooled httpx.AsyncClient."""

    name = "openai"

    def __init__(self, settings: GatewaySettings) -> None:
        self.base_url = settings.openai_base_url.rstrip("/")
        self.schema_dialect = settings.openai_schema_format
        self.concurrency = settings.openai_max_connections
        api_key = settings.openai_api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(settings.openai_timeout_s, connect=settings.openai_connect_timeout_s)
        self.timeout_s = settings.openai_timeout_s
        self.upstream_model = settings.openai_model or self._first_model(headers, timeout)
        self.model = settings.model_name or self.upstream_model
        limits = httpx.Limits(
            max_connections=settings.openai_max_connections,
            max_keepalive_connections=settings.openai_max_connections,
        )
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout, limits=limits)

    def _first_model(self, headers: dict[str, str], timeout: httpx.Timeout) -> str:
        """The server's first model id (GET /models), when the settings name none; runs at start-up."""
        try:
            response = httpx.get(f"{self.base_url}/models", headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"openai server at {self.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise RuntimeError(f"openai server at {self.base_url}: GET /models: {server_message(response)}")
        models = response.json().get("data") or []
        if not models:
            raise RuntimeError(f"openai server at {self.base_url} lists no models; set SWARM_GATEWAY_OPENAI_MODEL")
        return str(models[0]["id"])

    def _body(self, request: InferenceRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        # Only what the request names: the server's own defaults stand otherwise. repetition_penalty is not
        # OpenAI's own, but vLLM, SGLang and trtllm-serve take it (llama.cpp's server calls it repeat_penalty).
        for field in ("seed", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            value = getattr(request, field)
            if value is not None:
                body[field] = value
        if request.repetition_penalty is not None and self.schema_dialect == "json_object":
            body["repeat_penalty"] = request.repetition_penalty
        if request.json_schema is not None:
            body["response_format"] = response_format(request.json_schema, self.schema_dialect)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # servers that do not know it ignore it
        return body

    async def generate(self, request: InferenceRequest) -> Completion:
        """The streamed reply, collected: the first delta's arrival is the time to first token, and a cancelled
        call closes its HTTP stream. A server that drops a stream before its first delta is asked again for a
        whole reply, which carries its error (llama.cpp's server refuses a prompt that way)."""
        try:
            return await collect(self.generate_stream(request))
        except StreamEndedEarly as exc:
            if exc.deltas:
                raise
        return await self._generate_whole(request)

    async def _generate_whole(self, request: InferenceRequest) -> Completion:
        """POST /chat/completions and wait for the whole reply."""
        try:
            try:
                response = await self._client.post("/chat/completions", json=self._body(request, stream=False))
            except (httpx.RemoteProtocolError, httpx.ReadError):  # a pooled connection the server dropped: once more
                response = await self._client.post("/chat/completions", json=self._body(request, stream=False))
        except httpx.TimeoutException as exc:
            raise EngineError(f"openai server timed out after {self.timeout_s:g}s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise EngineError(f"openai server unreachable at {self.base_url}: {exc!r}") from exc
        if response.status_code != 200:
            raise http_error(response.status_code, server_message(response))
        try:
            result = response.json()
            choice = result["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"openai server sent a reply that is not a chat completion: {exc!r}") from exc
        if request.json_schema is not None:
            content = parse_json_output(content, choice.get("finish_reason"), request.max_tokens)
        usage = result.get("usage") or {}
        return Completion(
            content,
            int(usage.get("prompt_tokens") or self._prompt_estimate(request)),
            int(usage.get("completion_tokens") or estimate_tokens(content)),
        )

    async def generate_stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]:
        """POST /chat/completions with stream=true; the deltas of its server-sent events as they come."""
        parts: list[str] = []
        finish_reason: str | None = None
        usage: dict[str, Any] = {}
        ended = False
        started_at = time.perf_counter()
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json=self._body(request, stream=True)
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise http_error(response.status_code, server_message(response))
                async for line in response.aiter_lines():
                    if not line.startswith(SSE_DATA):
                        continue  # blank separators, comments (': ping'), event names
                    data = line[len(SSE_DATA) :].strip()
                    if data == SSE_DONE:
                        ended = True
                        break
                    event = self._event(data)
                    if event.get("error"):
                        raise EngineError(f"openai server failed mid-stream: {event['error']}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or ():
                        finish_reason = choice.get("finish_reason") or finish_reason
                        delta = (choice.get("delta") or {}).get("content") or ""
                        if delta:
                            parts.append(delta)
                            yield delta
        except httpx.TimeoutException as exc:
            waited_s = time.perf_counter() - started_at
            raise EngineError(f"openai server timed out after {waited_s:.1f}s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            if not parts:  # dropped before its first delta: see `generate`
                raise StreamEndedEarly(0) from exc
            raise EngineError(f"openai server unreachable at {self.base_url}: {exc!r}") from exc
        if not ended and finish_reason is None:
            # The server closed the stream half-way: its error went to its log, not to us.
            raise StreamEndedEarly(len(parts))
        content = "".join(parts)
        if request.json_schema is not None:
            content = parse_json_output(content, finish_reason, request.max_tokens)
        yield Completion(
            content,
            int(usage.get("prompt_tokens") or self._prompt_estimate(request)),
            int(usage.get("completion_tokens") or len(parts)),
        )

    @staticmethod
    def _event(data: str) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise EngineError(f"openai server sent an unreadable stream event: {data[:200]!r}") from exc
        return event if isinstance(event, dict) else {}

    @staticmethod
    def _prompt_estimate(request: InferenceRequest) -> int:
        return sum(estimate_tokens(m.content) for m in request.messages)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
