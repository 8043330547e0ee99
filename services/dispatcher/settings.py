"""Dispatcher settings (env prefix SWARM_DISPATCHER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.contracts import DEFAULT_POOL
from swarm.settings import NatsSettings


class DispatcherSettings(BaseSettings):
    """How the dispatcher schedules, retries and reports."""

    model_config = SettingsConfigDict(env_prefix="SWARM_DISPATCHER_", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    pool: str = Field(DEFAULT_POOL, description="Worker pool that receives the steps.")
    tenant_pools: dict[str, str] = Field(
        default_factory=dict,
        description='Dedicated worker pool per tenant, JSON (e.g. {"acme": "acme"}); other tenants use `pool`.',
    )
    max_in_flight: int = Field(
        144,
        ge=1,
        description="Steps queued or running at once, over all runs and all dispatcher replicas: the worker pool's "
        "capacity (workers x SWARM_WORKER_CONCURRENCY) plus ~1/8 headroom (default: the local stack's 2 x 64). "
        "Ready steps beyond it wait in the dispatcher, in fair-share order, not in the first-in first-out queue.",
    )
    max_in_flight_per_tenant: int = Field(
        1024, ge=1, description="Steps of one tenant queued or running at once, over all dispatcher replicas."
    )
    tenant_weights: dict[str, float] = Field(
        default_factory=dict,
        description='Fair-share weight per tenant, JSON (e.g. {"acme": 2}); a tenant not named weighs 1.',
    )
    max_in_flight_per_run: int = Field(1024, ge=1, description="Steps of one run queued or running at once.")
    max_agents: int = Field(300, ge=1, description="Agents a run may have, spawned ones included.")
    max_steps: int = Field(4000, ge=1, description="Steps a run may have, spawned ones included.")
    checkpoint_interval_s: float = Field(
        0.2, ge=0, description="Least time between checkpoints of a run; results are acked when covered."
    )
    results_batch: int = Field(256, ge=1, description="Results fetched and checkpointed together.")
    results_give_up_after: int = Field(
        12, ge=1, description="Deliveries (with backoff, ~4 min) of a result for an unknown run or attempt before it is terminated."
    )
    retry_base_s: float = Field(0.5, ge=0, description="Backoff before the second attempt (doubles after).")
    retry_cap_s: float = Field(30.0, ge=0, description="Longest backoff between attempts.")
    progress_interval_s: float = Field(0.5, gt=0, description="Least time between progress events of a run.")
    lost_step_grace_s: float = Field(
        300.0, ge=0, description="An attempt with no result after 2 x its timeout plus this is failed (and retried)."
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="How often queued steps are checked for loss.")
    log_level: str = Field("INFO", description="Log level.")
