"""FAKE tensorrt_llm._tensorrt_engine: records calls; the real package needs CUDA.

The real module holds the LLM class that loads engine directories built by trtllm-build.
"""

from __future__ import annotations

from typing import Any

from tensorrt_llm import CALLS
from tensorrt_llm import LLM as _LLM


class LLM(_LLM):
    """FAKE engine-directory LLM: like the fake LLM, and it refuses build-time limits (baked into the engine)."""

    def __init__(self, model: str, tokenizer: str | None = None, **kwargs: Any) -> None:
        for baked in ("max_seq_len", "max_batch_size"):
            if baked in kwargs:
                raise ValueError(f"FAKE tensorrt_llm: {baked} is fixed when the engine is built")
        super().__init__(model, tokenizer, **kwargs)
        CALLS.append(("tensorrt_engine.LLM", {"model": model}))
