"""Aggregator settings (env prefix SWARM_AGGREGATOR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.settings import NatsSettings


class AggregatorSettings(BaseSettings):
    """How runs are synthesized."""

    model_config = SettingsConfigDict(env_prefix="SWARM_AGGREGATOR_", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    fan_in: int = Field(8, ge=2, description="Outputs one synthesis call reads; more are reduced hierarchically.")
    context_chars: int = Field(6000, ge=500, description="Characters of outputs put into one synthesis prompt.")
    max_tokens: int = Field(384, ge=16, description="Completion budget of a synthesis call.")
    timeout_s: float = Field(300.0, gt=0, description="Time for one synthesis call, queueing included.")
    resample_max: int = Field(
        3, ge=0, le=10, description="Samples drawn again (new seed, hotter) when a synthesis falls short."
    )
    resample_temperature_step: float = Field(
        0.3, ge=0, le=1, description="How much hotter each new sample of a synthesis is drawn."
    )
    concurrency: int = Field(8, ge=1, le=256, description="Runs synthesized at once.")
    fetch_timeout_s: float = Field(1.0, gt=0, description="Longest wait of one pull request for executed runs.")
    graceful_timeout_s: float = Field(
        300.0, gt=0, description="On SIGTERM, how long the syntheses in hand may take to finish."
    )
    log_level: str = Field("INFO", description="Log level.")
