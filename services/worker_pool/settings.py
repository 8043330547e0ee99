"""Worker-pool settings (env prefix SWARM_WORKER_)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from swarm.contracts import DEFAULT_POOL, PAYLOADS_STORE, BucketSpec, tenant_payloads_store
from swarm.settings import NatsSettings


class SandboxMode(StrEnum):
    """How the python tool isolates agents' code."""

    BWRAP = "bwrap"
    UNSAFE_NONE = "unsafe-none"


class WorkerSettings(BaseSettings):
    """How one worker process takes and runs steps."""

    model_config = SettingsConfigDict(env_prefix="SWARM_WORKER_", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings)
    pool: str = Field(DEFAULT_POOL, description="Worker pool (STEPS subject) to serve.")
    tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Tenants a dedicated pool serves, comma separated (its NATS user may touch only their keys "
        "and their own payload stores); empty: a shared pool serving every tenant, payloads in one store.",
    )
    concurrency: int = Field(64, ge=1, description="Steps run at once by this process.")
    # Short, with heartbeats 3x as often: a killed worker's steps run again elsewhere within seconds.
    ack_wait_s: float = Field(3.0, gt=0, description="Redeliver a step whose worker went silent this long.")
    max_deliver: int = Field(20, ge=1, description="Deliveries of one step before it is given up.")
    heartbeat_s: float = Field(1.0, gt=0, description="Interval of in-progress heartbeats while a step runs.")
    early_events_s: float = Field(
        10.0, gt=0, description="A step running this long publishes its events so far (watchers see it started)."
    )
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
    sandbox: SandboxMode = Field(
        SandboxMode.BWRAP,
        description="Isolation of the python tool: bwrap (namespaces + seccomp; the tool fails closed when it "
        "cannot be set up) or unsafe-none (no boundary at all, logged on every run; never in production).",
    )
    sandbox_cpu_s: int = Field(5, ge=1, description="CPU seconds of one sandboxed process (RLIMIT_CPU).")
    sandbox_memory_mb: int = Field(512, ge=64, description="Address space of one sandboxed process (RLIMIT_AS).")
    sandbox_wall_s: float = Field(10.0, gt=0, description="Wall-clock limit of one sandboxed Python run.")
    sandbox_file_mb: int = Field(16, ge=1, description="Largest file a sandboxed run may write (RLIMIT_FSIZE).")
    sandbox_disk_mb: int = Field(64, ge=1, description="Size of a sandboxed run's private tmpfs (/tmp, work dir).")
    sandbox_processes: int = Field(
        4, ge=1, le=64, description="Processes and threads a sandboxed run may have at once, its own included (RLIMIT_NPROC)."
    )
    sandbox_output_kb: int = Field(64, ge=1, description="Stdout (and stderr) kept of one run; the rest is dropped.")
    sandbox_user: str | None = Field(
        "nobody", description="Unprivileged user bwrap runs as when the worker runs as root."
    )
    sandbox_concurrency: int = Field(2, ge=1, description="Sandboxed Python runs at once in this process.")
    scratchpad_max_bytes: int = Field(65536, ge=1, description="Largest value in the scratchpad tool.")
    spawn_max_steps: int = Field(200, ge=1, description="Steps one step may spawn (the dispatcher enforces run limits).")
    http_fetch_enabled: bool = Field(False, description="Offer the http_fetch tool (off by default).")
    http_allowed_hosts: tuple[str, ...] = Field((), description="Hosts http_fetch may reach (exact names).")
    http_allowed_ports: tuple[int, ...] = Field((80, 443), description="Ports http_fetch may connect to.")
    http_allowed_networks: tuple[str, ...] = Field(
        (),
        description="Private networks (CIDR) http_fetch may reach all the same, e.g. an intranet API; loopback "
        "and cloud-metadata addresses are never reachable unless listed here, and metadata never.",
    )
    http_max_bytes: int = Field(1_000_000, ge=1, description="Largest response body http_fetch reads.")
    log_level: str = Field("INFO", description="Log level.")

    @field_validator("tenants", mode="before")
    @classmethod
    def _split_tenants(cls, value: object) -> object:
        return tuple(t.strip() for t in value.split(",") if t.strip()) if isinstance(value, str) else value

    def payloads_store(self, tenant: str) -> BucketSpec:
        """Where this worker stores (and looks for) large values of `tenant`'s runs."""
        return tenant_payloads_store(tenant) if self.tenants else PAYLOADS_STORE
