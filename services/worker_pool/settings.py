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
    resample_max: int = Field(
        2, ge=0, le=10, description="Samples drawn again (new seed, hotter) when an output is degenerate."
    )
    resample_temperature_step: float = Field(
        0.3, ge=0, le=1, description="How much hotter each new sample of a degenerate output is drawn."
    )
    inline_payload_bytes: int = Field(
        1_000_000, ge=1024, description="Outputs larger than this go to the object store by reference."
    )
    # Tools (steps with `tools`) and structured output (steps with `output_schema`).
    max_tool_rounds: int = Field(4, ge=0, le=50, description="Tool calls one step may make before it must answer.")
    tool_timeout_s: float = Field(30.0, gt=0, description="Wall-clock limit of one tool call.")
    tool_result_chars: int = Field(4000, ge=100, description="Characters of a tool's result shown to the model.")
    answer_max_chars: int = Field(8000, ge=100, description="maxLength of string fields in the tool-calling schema.")
    sandbox_cpu_s: int = Field(5, ge=1, description="CPU seconds of one sandboxed Python run (RLIMIT_CPU).")
    sandbox_memory_mb: int = Field(512, ge=64, description="Address space of one sandboxed Python run (RLIMIT_AS).")
    sandbox_wall_s: float = Field(10.0, gt=0, description="Wall-clock limit of one sandboxed Python run.")
    sandbox_file_mb: int = Field(16, ge=1, description="Largest file a sandboxed run may write (RLIMIT_FSIZE).")
    sandbox_user: str | None = Field(
        "nobody", description="Unprivileged user sandboxed code runs as, when the worker runs as root."
    )
    sandbox_concurrency: int = Field(2, ge=1, description="Sandboxed Python runs at once in this process.")
    scratchpad_max_bytes: int = Field(65536, ge=1, description="Largest value in the scratchpad tool.")
    spawn_max_steps: int = Field(100, ge=1, description="Steps one step may spawn (the dispatcher enforces run limits).")
    http_fetch_enabled: bool = Field(False, description="Offer the http_fetch tool (off by default).")
    http_allowed_hosts: tuple[str, ...] = Field((), description="Hosts http_fetch may reach (exact names).")
    http_max_bytes: int = Field(1_000_000, ge=1, description="Largest response body http_fetch reads.")
    log_level: str = Field("INFO", description="Log level.")
