"""FAKE tensorrt_llm: records calls; the real package needs CUDA.

Implements the slice of TensorRT-LLM's LLM API the gateway's trtllm backend uses, with the real
signatures (keyword names, keyword-only arguments), and checks what it is given the way the real one
would refuse it. Generation is deterministic text; guided JSON decoding yields a schema-valid document.
Every call is appended to CALLS as (name, kwargs).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from typing import Any

from tensorrt_llm.llmapi import GuidedDecodingParams

CALLS: list[tuple[str, dict[str, Any]]] = []
GUIDED_DECODING_BACKENDS = ("xgrammar", "llguidance")
FAKE_VOCABULARY = "the fake engine answers with these few words only".split()
STREAM_STEP_S = 0.001
__version__ = "0.0.0+fake"
__all__ = ["CALLS", "LLM", "GuidedDecodingParams", "SamplingParams"]


class SamplingParams:
    """FAKE SamplingParams: the keyword arguments the real one takes (a subset), all keyword-only."""

    def __init__(
        self,
        *,
        max_tokens: int = 32,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop: str | list[str] | None = None,
        guided_decoding: GuidedDecodingParams | None = None,
    ) -> None:
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if guided_decoding is not None and not isinstance(guided_decoding, GuidedDecodingParams):
            raise TypeError("guided_decoding must be a GuidedDecodingParams")
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.stop = stop
        self.guided_decoding = guided_decoding
        CALLS.append(("SamplingParams", {"max_tokens": max_tokens, "temperature": temperature,
                                         "guided_decoding": guided_decoding}))  # fmt: skip


class FakeTokenizer:
    """FAKE TransformersTokenizer: a ChatML template, one token per 4 characters."""

    def apply_chat_template(
        self, conversation: list[dict[str, str]], tokenize: bool = True, add_generation_prompt: bool = False
    ) -> str | list[int]:
        CALLS.append(("apply_chat_template", {"conversation": conversation, "tokenize": tokenize,
                                              "add_generation_prompt": add_generation_prompt}))  # fmt: skip
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return self.encode(text) if tokenize else text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [hash(text[i : i + 4]) % 32000 for i in range(0, len(text), 4)]
        return ([1] if add_special_tokens else []) + ids


@dataclass
class CompletionOutput:
    """FAKE CompletionOutput."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    """FAKE RequestOutput: awaitable (whole reply) or async-iterable (streaming=True), like the real one."""

    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    _pieces: list[str] = field(default_factory=list, repr=False)
    _streaming: bool = False

    def __await__(self) -> Generator[Any, None, RequestOutput]:
        if self._streaming:
            raise RuntimeError("FAKE tensorrt_llm: a streaming generate_async result is iterated, not awaited")
        yield from asyncio.sleep(0).__await__()
        self._advance(len(self._pieces))
        return self

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        if not self._streaming:
            raise RuntimeError("FAKE tensorrt_llm: iterate generate_async only with streaming=True")
        return self._stream()

    async def _stream(self) -> AsyncIterator[RequestOutput]:
        for _ in self._pieces:
            await asyncio.sleep(STREAM_STEP_S)
            self._advance(1)
            yield self

    def _advance(self, n: int) -> None:
        out = self.outputs[0]
        done = len(out.token_ids)
        for piece in self._pieces[done : done + n]:
            out.text += piece
            out.token_ids.append(len(out.token_ids) + 100)
        if len(out.token_ids) == len(self._pieces):
            self.finished = True
            out.finish_reason = "stop"


class LLM:
    """FAKE LLM: checks the constructor arguments and the generate_async calls, answers deterministically."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        *,
        tensor_parallel_size: int = 1,
        max_seq_len: int | None = None,
        max_batch_size: int | None = None,
        guided_decoding_backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not model:
            raise ValueError("model is required")
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be a positive int, got {tensor_parallel_size!r}")
        if guided_decoding_backend not in (None, *GUIDED_DECODING_BACKENDS):
            raise ValueError(f"unknown guided_decoding_backend {guided_decoding_backend!r}")
        if kwargs:
            raise TypeError(f"FAKE tensorrt_llm: LLM got arguments the gateway should not pass: {sorted(kwargs)}")
        self.args = {"model": model, "tokenizer": tokenizer, "tensor_parallel_size": tensor_parallel_size,
                     "max_seq_len": max_seq_len, "max_batch_size": max_batch_size,
                     "guided_decoding_backend": guided_decoding_backend}  # fmt: skip
        self.max_seq_len = max_seq_len or 2048
        self.is_shut_down = False
        self._tokenizer = FakeTokenizer()
        CALLS.append(("LLM", dict(self.args)))

    @property
    def tokenizer(self) -> FakeTokenizer:
        return self._tokenizer

    def generate_async(
        self,
        inputs: str | list[int],
        sampling_params: SamplingParams | None = None,
        *,
        streaming: bool = False,
        **kwargs: Any,
    ) -> RequestOutput:
        CALLS.append(("generate_async", {"inputs": inputs, "sampling_params": sampling_params,
                                         "streaming": streaming, **kwargs}))  # fmt: skip
        if self.is_shut_down:
            raise RuntimeError("LLM is shut down")
        if sampling_params is not None and not isinstance(sampling_params, SamplingParams):
            raise TypeError("sampling_params must be a SamplingParams")
        params = sampling_params or SamplingParams()
        prompt_ids = list(inputs) if isinstance(inputs, list) else self._tokenizer.encode(inputs)
        if len(prompt_ids) + params.max_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(prompt_ids)}) + max_tokens ({params.max_tokens}) exceeds max_seq_len {self.max_seq_len}"
            )
        guided = params.guided_decoding
        if guided is not None and self.args["guided_decoding_backend"] is None:
            raise ValueError("guided decoding needs LLM(guided_decoding_backend=...)")
        rng = random.Random(len(prompt_ids))
        if guided is not None and guided.json is not None:
            text = json.dumps(_document(guided.json if isinstance(guided.json, dict) else json.loads(guided.json)))
            pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        else:
            words = [rng.choice(FAKE_VOCABULARY) for _ in range(params.max_tokens)]
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        return RequestOutput(prompt_ids, [CompletionOutput(0)], _pieces=pieces, _streaming=streaming)

    def shutdown(self) -> None:
        CALLS.append(("shutdown", {}))
        self.is_shut_down = True


def _document(schema: dict[str, Any]) -> Any:
    """A small document valid for simple schemas (what xgrammar would constrain the model to)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _document(props[name]) for name in schema.get("required", list(props))}
    if kind == "array":
        return [_document(schema.get("items", {})) for _ in range(schema.get("minItems", 1))]
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "number":
        return schema.get("minimum", 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "fake"[: schema.get("maxLength", 4)]
