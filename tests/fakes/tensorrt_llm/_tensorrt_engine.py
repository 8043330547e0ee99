"""FAKE tensorrt_llm._tensorrt_engine: records calls; the real package needs CUDA.

The real module holds the LLM class that loads engine directories built by trtllm-build. An engine directory
holds no tokenizer, and this runtime has xgrammar only (llguidance is the PyTorch runtime's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tensorrt_llm import CALLS
from tensorrt_llm import LLM as _LLM


class LLM(_LLM):
    """FAKE engine-directory LLM: like the fake LLM, refusing build-time limits and grammar backends it lacks."""

    def __init__(self, model: str, tokenizer: str | None = None, **kwargs: Any) -> None:
        for baked in ("max_seq_len", "max_batch_size"):
            if baked in kwargs:
                raise ValueError(f"FAKE tensorrt_llm: {baked} is fixed when the engine is built")
        super().__init__(model, tokenizer, **kwargs)
        CALLS.append(("tensorrt_engine.LLM", {"model": model}))

    @staticmethod
    def _engine_max_seq_len(model_dir: Path) -> int | None:
        config = model_dir / "config.json"
        if not config.exists():
            raise FileNotFoundError(f"{config}: not an engine directory built by trtllm-build")
        return int(json.loads(config.read_text())["build_config"]["max_seq_len"])

    def _set_up_guided_decoding(self, backend: str) -> None:
        if backend != "xgrammar":
            raise ValueError(f"Unsupported guided decoding backend {backend}")
        super()._set_up_guided_decoding(backend)

    def _check_arguments(self, prompt_len: int, params: Any) -> None:
        # The TensorRT runtime checks prompt + max_tokens against the engine's max_seq_len (unless chunked).
        if not self.args["enable_chunked_prefill"] and prompt_len + params.max_tokens > self.max_seq_len:
            raise ValueError(f"The sum of prompt length ({prompt_len}) and query length (0) max_tokens "
                             f"({params.max_tokens}) should not exceed max_seq_len ({self.max_seq_len})")  # fmt: skip
