"""Worker-pool settings (env prefix SWARM_WORKER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.contracts import DEFAULT_POOL
from swarm.settings import NatsSettings


class WorkerSettings(BaseSettings):
    """How one worker process takes and runs steps."""

    model_config = SettingsConfigDict(env_prefix="SWARM_WORKER_", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    pool: str = Field(DEFAULT_POOL, description="Worker pool (STEPS subject) to serve.")
    concurrency: int = Field(64, ge=1, description="Steps run at once by this process.")
    ack_wait_s: float = Field(30.0, gt=0, description="Redeliver a step whose worker went silent this long.")
    max_deliver: int = Field(20, ge=1, description="Deliveries of one step before it is given up.")
    heartbeat_s: float = Field(10.0, gt=0, description="Interval of in-progress heartbeats while a step runs.")
    context_chars: int = Field(6000, ge=200, description="Characters of dependency outputs put into a prompt.")
    log_level: str = Field("INFO", description="Log level.")
