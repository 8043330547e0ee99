"""The trtllm backend: TensorRT-LLM's LLM API in process, tensor parallel across the GPUs, in-flight batching.

`tensorrt_llm` is imported here, lazily: it needs CUDA and MPI and cannot be installed elsewhere. The LLM
batches every request in flight itself, so the gateway runs up to `trtllm_max_batch_size` at once. Prompts
go through the model's own chat template; JSON schemas through guided decoding (xgrammar or llguidance).
A request whose caller stops waiting (deadline, cancelled stream, gateway stop) is aborted inside the
engine, so its batch slot and KV cache go to the requests still wanted.
The process that builds the LLM must start under `if __name__ == "__main__"` (MPI spawns the TP workers):
`python -m services.gateway` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.gateway.engine import Completion, EngineError, StreamItem, collect, parse_json_output
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest


def looks_local(name: str) -> bool:
    """Whether a model or tokenizer name is meant as a path (not a Hugging Face Hub id)."""
    return name.startswith(("/", ".", "~"))


class TrtLlmEngine:
    """One TensorRT-LLM `LLM` over `tensor_parallel_size` GPUs; generate_async for every request."""

    name = "trtllm"

    def __init__(self, settings: GatewaySettings) -> None:
        for setting, value in (("MODEL", settings.trtllm_model), ("TOKENIZER", settings.trtllm_tokenizer)):
            if value and looks_local(value) and not Path(value).expanduser().is_dir():
                raise RuntimeError(
                    f"SWARM_GATEWAY_TRTLLM_{setting}={value} is not a directory: fetch the checkpoint first "
                    "(compose: the gateway-model job; by hand: huggingface-cli download NAME --local-dir DIR)"
                )
        try:
            from tensorrt_llm import LLM, SamplingParams
            from tensorrt_llm.llmapi import GuidedDecodingParams

            if settings.trtllm_runtime == "tensorrt":
                from tensorrt_llm._tensorrt_engine import LLM  # loads trtllm-build engine directories
        except ImportError as exc:
            raise RuntimeError(
                "the trtllm backend needs tensorrt-llm (CUDA only): "
                "pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com"
            ) from exc
        self._sampling_params = SamplingParams
        self._guided_params = GuidedDecodingParams
        self.model = settings.model_name or settings.trtllm_model.rstrip("/").rsplit("/", 1)[-1]
        self.max_seq_len = settings.trtllm_max_seq_len
        self.concurrency = settings.trtllm_max_batch_size
        limits: dict[str, int] = {}
        if settings.trtllm_runtime == "pytorch":  # a built engine has them baked in
            limits = {
                "max_seq_len": settings.trtllm_max_seq_len,
                "max_batch_size": settings.trtllm_max_batch_size,
            }
        self._llm = LLM(
            model=settings.trtllm_model,
            tokenizer=settings.trtllm_tokenizer or None,
            tensor_parallel_size=settings.tensor_parallel_size,
            guided_decoding_backend=settings.trtllm_guided_decoding_backend,
            # Both runtimes take these at run time (an engine's own max_num_tokens is its upper bound);
            # left out, the LLM's default of 8192 would refuse longer prompts.
            max_num_tokens=settings.trtllm_max_num_tokens,
            enable_chunked_prefill=settings.trtllm_enable_chunked_prefill,
            **limits,
        )
        self._tokenizer: Any = self._llm.tokenizer

    def _prepare(self, request: InferenceRequest) -> tuple[list[int], Any]:
        """The prompt's token ids (chat template applied) and the sampling parameters."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        prompt = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        token_ids = list(self._tokenizer.encode(prompt, add_special_tokens=False))
        room = self.max_seq_len - len(token_ids)
        if room < 1:
            raise EngineError(
                f"prompt too long: {len(token_ids)} tokens, the context window is {self.max_seq_len}"
            )
        guided = self._guided_params(json=request.json_schema) if request.json_schema is not None else None
        # The OpenAI-style repetition controls and the seed map one to one onto SamplingParams; unset ones
        # keep TensorRT-LLM's defaults.
        options = {
            name: value
            for name in ("repetition_penalty", "presence_penalty", "frequency_penalty", "seed")
            if (value := getattr(request, name)) is not None
        }
        params = self._sampling_params(
            max_tokens=min(request.max_tokens, room),
            temperature=request.temperature,
            guided_decoding=guided,
            **options,
        )
        return token_ids, params

    async def generate(self, request: InferenceRequest) -> Completion:
        """One completion, streamed from the engine and collected: the first output's arrival is the time to
        first token; the LLM batches it with every other request in flight."""
        return await collect(self.generate_stream(request))

    async def generate_stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]:
        """generate_async(streaming=True): each output holds the text so far; the deltas are what is new."""
        token_ids, params = self._prepare(request)
        result = self._llm.generate_async(token_ids, sampling_params=params, streaming=True)
        sent = 0
        output: Any = None
        try:
            async for output in result:
                text = output.outputs[0].text
                if len(text) > sent:
                    yield text[sent:]
                    sent = len(text)
        finally:
            # Cancelled (deadline), closed early by the consumer (GeneratorExit) or failed: stop generating.
            self._abort_unfinished(result)
        if output is None:
            raise EngineError("trtllm produced no output")
        yield self._completion(request, token_ids, params, output)

    @staticmethod
    def _abort_unfinished(result: Any) -> None:
        """Abort a request nobody waits for any more: TensorRT-LLM frees its batch slot and KV cache."""
        if not result.finished:
            result.abort()

    @staticmethod
    def _completion(request: InferenceRequest, token_ids: list[int], params: Any, output: Any) -> Completion:
        result = output.outputs[0]
        finish_reason = getattr(result, "finish_reason", None)
        if finish_reason in ("cancelled", "timeout"):
            raise EngineError(f"trtllm ended the request early (finish_reason={finish_reason})")
        content = result.text
        if request.json_schema is not None:
            content = parse_json_output(content, finish_reason, params.max_tokens)
        return Completion(content, len(token_ids), len(result.token_ids))

    async def close(self) -> None:
        """Shut the executor and its MPI workers down."""
        await asyncio.to_thread(self._llm.shutdown)
