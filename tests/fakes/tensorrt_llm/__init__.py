"""FAKE tensorrt_llm: records calls; the real package needs CUDA.

Implements the slice of TensorRT-LLM's LLM API (1.x) the gateway's trtllm backend uses, with the real
signatures (keyword names, keyword-only arguments), and refuses what the real one refuses:
- `generate_async` takes only its real keyword arguments;
- the tokenizer is loaded while the LLM is built: from a local directory, or from the Hub unless
  HF_HUB_OFFLINE=1; a directory without tokenizer files (an engine directory) leaves `llm.tokenizer` None,
  and guided decoding then fails as the real xgrammar set-up does;
- without chunked prefill, the PyTorch runtime refuses a prompt longer than `max_num_tokens`.
Generation is deterministic text, one token per STEP_S seconds; guided JSON decoding yields a schema-valid
document. A generation stops at `max_tokens` with finish_reason "length" (a JSON document cut there does
not parse), else "stop"; `abort()` ends it with "cancelled". Every call is appended to CALLS as (name, kwargs).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorrt_llm.llmapi import GuidedDecodingParams

CALLS: list[tuple[str, dict[str, Any]]] = []
GUIDED_DECODING_BACKENDS = ("xgrammar", "llguidance")
FAKE_VOCABULARY = "the fake engine answers with these few words only".split()
STEP_S = 0.001  # seconds per generated token; tests raise it to keep a request running
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
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
        repetition_penalty: float | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        seed: int | None = None,
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
        self.repetition_penalty = repetition_penalty
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.seed = seed
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
    finish_reason: str | None = None  # 'stop', 'length', 'timeout' or 'cancelled', like the real one


class RequestOutput:
    """FAKE RequestOutput (a GenerationResult): awaitable (whole reply) or async-iterable (streaming=True)."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], pieces: list[str], length_cut: bool,
                 streaming: bool) -> None:  # fmt: skip
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(0)]
        self._pieces = pieces
        self._length_cut = length_cut  # stopped by max_tokens, not by the model
        self._streaming = streaming
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        """Like the real one: asks the executor to drop the request; its last response says 'cancelled'."""
        CALLS.append(("abort", {"request_id": self.request_id, "finished": self._done}))
        if not self._done:
            self._done = True
            self.outputs[0].finish_reason = "cancelled"

    def __await__(self) -> Generator[Any, None, RequestOutput]:
        if self._streaming:
            raise RuntimeError(
                "FAKE tensorrt_llm: a streaming generate_async result is iterated, not awaited"
            )
        return self._whole().__await__()

    async def _whole(self) -> RequestOutput:
        while not self._done:
            await self._step()
        return self

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        if not self._streaming:
            raise RuntimeError("FAKE tensorrt_llm: iterate generate_async only with streaming=True")
        return self._stream()

    async def _stream(self) -> AsyncIterator[RequestOutput]:
        while not self._done:
            await self._step()
            yield self

    async def _step(self) -> None:
        """One decoding iteration: the next token, or the end."""
        await asyncio.sleep(STEP_S)
        if self._done:  # aborted while this iteration ran
            return
        out = self.outputs[0]
        out.text += self._pieces[len(out.token_ids)]
        out.token_ids.append(len(out.token_ids) + 100)
        if len(out.token_ids) == len(self._pieces):
            self._done = True
            out.finish_reason = "length" if self._length_cut else "stop"


class LLM:
    """FAKE LLM (the PyTorch runtime): checks the constructor and generate_async calls, answers deterministically."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        *,
        tensor_parallel_size: int = 1,
        max_seq_len: int | None = None,
        max_batch_size: int | None = None,
        max_num_tokens: int | None = 8192,
        enable_chunked_prefill: bool = False,
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
            raise ValueError(f"LLM got invalid argument: {sorted(kwargs)[0]}")
        self.args = {"model": model, "tokenizer": tokenizer, "tensor_parallel_size": tensor_parallel_size,
                     "max_seq_len": max_seq_len, "max_batch_size": max_batch_size,
                     "max_num_tokens": max_num_tokens, "enable_chunked_prefill": enable_chunked_prefill,
                     "guided_decoding_backend": guided_decoding_backend}  # fmt: skip
        CALLS.append(("LLM", dict(self.args)))
        model_dir = Path(model).expanduser()
        if model_dir.is_dir() and not (model_dir / "config.json").exists():
            raise ValueError(f"{model} holds no config.json: neither a checkpoint nor an engine directory")
        self.max_seq_len = max_seq_len or self._engine_max_seq_len(model_dir) or 2048
        self.is_shut_down = False
        self._next_request_id = 0
        self._tokenizer = _load_tokenizer(tokenizer or model)
        if guided_decoding_backend is not None:
            self._set_up_guided_decoding(guided_decoding_backend)

    @staticmethod
    def _engine_max_seq_len(model_dir: Path) -> int | None:
        return None  # a checkpoint: the model's own context length would apply

    def _set_up_guided_decoding(self, backend: str) -> None:
        # The real set-up reads the vocabulary (`tokenizer.eos_token_id`, `get_vocab()`): no tokenizer, no grammar.
        if self._tokenizer is None:
            raise AttributeError("'NoneType' object has no attribute 'eos_token_id'")

    @property
    def tokenizer(self) -> FakeTokenizer | None:
        return self._tokenizer

    def generate_async(
        self,
        inputs: str | list[int],
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        CALLS.append(("generate_async", {"inputs": inputs, "sampling_params": sampling_params,
                                         "streaming": streaming}))  # fmt: skip
        if self.is_shut_down:
            raise RuntimeError("LLM is shutting down")
        if sampling_params is not None and not isinstance(sampling_params, SamplingParams):
            raise TypeError("sampling_params must be a SamplingParams")
        params = sampling_params or SamplingParams()
        if isinstance(inputs, str):
            if self._tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer")
            prompt_ids = self._tokenizer.encode(inputs)
        else:
            prompt_ids = list(inputs)
        self._check_arguments(len(prompt_ids), params)
        guided = params.guided_decoding
        if guided is not None and self.args["guided_decoding_backend"] is None:
            raise ValueError("guided decoding needs LLM(guided_decoding_backend=...)")
        rng = random.Random(len(prompt_ids))
        if guided is not None and guided.json is not None:
            text = json.dumps(
                _document(guided.json if isinstance(guided.json, dict) else json.loads(guided.json))
            )
            pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        else:  # free text: the fake model never stops on its own
            pieces = [
                w if i == 0 else " " + w
                for i, w in enumerate(rng.choices(FAKE_VOCABULARY, k=params.max_tokens))
            ]
        length_cut = len(pieces) >= params.max_tokens
        self._next_request_id += 1
        return RequestOutput(
            self._next_request_id, prompt_ids, pieces[: params.max_tokens], length_cut, streaming
        )

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        """What the real LLM checks before it queues a request (PyTorch runtime)."""
        max_num_tokens = self.args["max_num_tokens"]
        if not self.args["enable_chunked_prefill"] and max_num_tokens and prompt_len > max_num_tokens:
            raise ValueError(
                f"The sum of prompt length ({prompt_len}), query length (0) should not exceed "
                f"max_num_tokens ({max_num_tokens})"
            )
        if prompt_len + params.max_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt ({prompt_len}) + max_tokens ({params.max_tokens}) exceeds max_seq_len {self.max_seq_len}"
            )

    def shutdown(self) -> None:
        CALLS.append(("shutdown", {}))
        self.is_shut_down = True


def _load_tokenizer(source: str) -> FakeTokenizer | None:
    """As the LLM loads its tokenizer: a local directory's files, else the Hub (which offline mode forbids)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return FakeTokenizer() if any((path / name).exists() for name in TOKENIZER_FILES) else None
    if source.startswith(("/", ".", "~")):
        raise OSError(f"Incorrect path_or_model_id: '{source}'. Please provide either the path to a local folder "
                      "or the repo_id of a model on the Hub.")  # fmt: skip
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "on", "yes", "true"):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {source}, and "
                      "HF_HUB_OFFLINE=1 is set: no local copy of them was found.")  # fmt: skip
    return FakeTokenizer()  # downloaded from the Hub


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
