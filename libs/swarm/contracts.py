"""The wire contract: every message model, and every subject, stream and bucket next to it.

Nothing else in the code base writes a subject or stream literal; `proto/` is generated
from this module (`make proto`), and a test fails when it drifts.
"""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    model_validator,
)

CONTRACT_VERSION = 1
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

Id = Annotated[str, Field(pattern=ID_PATTERN, description="An identifier: letters, digits, '_' or '-'.")]
# A time from outside: RFC 3339 with an offset ('Z' or +hh:mm). A naive time would be ambiguous and cannot be
# compared with the services' own (aware, UTC) times, so it is rejected rather than guessed.
Timestamp = Annotated[AwareDatetime, Field(description="An RFC 3339 date-time with a time zone offset.")]

# What one submission may hold (proto/ states them as maxItems; the planner's settings may lower them).
PLAN_MAX_AGENTS = 300
PLAN_MAX_STEPS = 4000
STEP_MAX_DEPENDS_ON = 500
TASK_MAX_LABELS = 64
REJECTION_MAX_REASONS = 100

# THE message-size limit: NATS' max_payload, its default and what every server of the stack is configured
# with (`swarm.ops.natsserver`). Every other budget of a message's bytes or characters is a share of it.
MESSAGE_MAX_BYTES = 1024 * 1024
# A message's body: the rest is headroom for its headers (Nats-Msg-Id, trace context) and the protocol line.
MESSAGE_BODY_MAX_BYTES = MESSAGE_MAX_BYTES - MESSAGE_MAX_BYTES // 32
# A plan inline (else by PlanRef): a quarter, as RunPlanned, read by every follower of a run, also carries
# the goal and the rest of its envelope, and a plan's JSON grows when re-encoded by other clients.
PLAN_INLINE_MAX_BYTES = MESSAGE_MAX_BYTES // 4
# Dependency outputs inline in one StepDispatch (the rest by key): a quarter, beside the goal, the agent's
# instructions and the step's instruction, which together may take another quarter.
INLINE_INPUTS_MAX_CHARS = MESSAGE_MAX_BYTES // 4
# One output inline in a StepResult, and so in each dependent's dispatch: 1/64, so that sixteen of them fit
# the inputs' quarter of a dispatch.
INLINE_OUTPUT_MAX_CHARS = MESSAGE_MAX_BYTES // 64
# One step event attribute's value: a quarter (a step's 500 dependencies, a spawn's 4,000 new step ids fit).
EVENT_ATTRIBUTE_MAX_CHARS = MESSAGE_MAX_BYTES // 4
# The results a worker sends in one StepResultBatch: half a body (a single larger result goes alone), and
# at most this many of them.
RESULT_BATCH_MAX_BYTES = MESSAGE_BODY_MAX_BYTES // 2
RESULT_BATCH_MAX_RESULTS = 4096


# Free text that is indexed (the run index, the event log's columns) is bounded; `cut` is the one way a
# text is shortened to fit.
GOAL_MAX_CHARS = 32_000
RECORD_GOAL_MAX_CHARS = 200  # the goal as the run index shows it
ERROR_MAX_CHARS = 4000  # an error or a reason, in a result, an event or a record
NAME_MAX_CHARS = 200  # a name or an id that is not an Id: a model, a backend, a caller, a worker, a request


def cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, marked with '...' when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_goal(goal: str) -> str:
    """A goal as the run index holds it: its first characters, marked when cut."""
    return cut(goal, RECORD_GOAL_MAX_CHARS)


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


RESULT_PARTITIONS = 16


def result_partition(run_id: str) -> int:
    """The results partition of a run: stable across processes and versions."""
    return zlib.crc32(run_id.encode()) % RESULT_PARTITIONS


def is_valid_id(value: str) -> bool:
    """Whether `value` may be used as an id (and so as a subject token)."""
    return bool(_ID_RE.match(value))


class Contract(BaseModel):
    """Base of every message: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = Field(1, description="Contract version of this message (CONTRACT_VERSION).")


# --------------------------------------------------------------------------- streams


class Retention(StrEnum):
    """JetStream retention policy of a stream."""

    LIMITS = "limits"
    WORK_QUEUE = "workqueue"


class StreamSpec(BaseModel):
    """A JetStream stream as this project provisions it."""

    model_config = ConfigDict(frozen=True)

    name: str
    subjects: tuple[str, ...]
    retention: Retention
    description: str
    max_age_s: float = 0.0
    duplicate_window_s: float = 120.0


TASKS = StreamSpec(
    name="TASKS",
    subjects=("swarm.tasks.>",),
    retention=Retention.WORK_QUEUE,
    description="Submitted tasks; Nats-Msg-Id is the idempotency key.",
)
STEPS = StreamSpec(
    name="STEPS",
    subjects=("swarm.steps.>",),
    retention=Retention.WORK_QUEUE,
    description="Ready steps, one subject per worker pool.",
)
RESULTS = StreamSpec(
    name="RESULTS",
    # One subject per partition, not `swarm.results.>`: a result on a partition nobody reads would
    # stay in this work queue forever; here its publish fails at once instead.
    subjects=tuple(f"swarm.results.{partition}.*.*" for partition in range(RESULT_PARTITIONS)),
    retention=Retention.WORK_QUEUE,
    description="Step results back to the dispatcher.",
)
RUNS = StreamSpec(
    name="RUNS",
    subjects=("swarm.run.>",),
    retention=Retention.LIMITS,
    max_age_s=7 * 24 * 3600.0,
    description="Run lifecycle events a client can watch.",
)
EVENTS = StreamSpec(
    name="EVENTS",
    subjects=("swarm.events.>",),
    retention=Retention.LIMITS,
    max_age_s=7 * 24 * 3600.0,
    description="Every step and inference event, consumed by the recorder.",
)
ALL_STREAMS = (TASKS, STEPS, RESULTS, RUNS, EVENTS)


class BucketSpec(BaseModel):
    """A JetStream key-value bucket or object store."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    history: int = 1
    kind: Literal["kv", "object"] = "kv"
    ttl_s: float = 0.0

    @property
    def stream(self) -> str:
        """The JetStream stream behind it: `KV_<name>` or `OBJ_<name>`."""
        return f"{'KV' if self.kind == 'kv' else 'OBJ'}_{self.name}"

    @property
    def subjects(self) -> str:
        """Every subject of that stream: `$KV.<name>.>` or `$O.<name>.>`."""
        return f"{'$KV' if self.kind == 'kv' else '$O'}.{self.name}.>"

    def key_subject(self, key: str) -> str:
        """The subject a KV put under `key` is a publish to."""
        return f"$KV.{self.name}.{key}"


RUN_STATE_BUCKET = BucketSpec(
    name="swarm_run_state", ttl_s=7 * 24 * 3600.0,
    description="Dispatcher checkpoints of run state; a checkpoint not rewritten for 7 days expires.",
)  # fmt: skip
RUN_INDEX_BUCKET = BucketSpec(name="swarm_runs", description="One record per run: status, goal, counts.")
OUTPUTS_BUCKET = BucketSpec(name="swarm_outputs", description="Step outputs, key '<tenant>.<run_id>.<step_id>'.")
PAYLOADS_STORE = BucketSpec(
    name="swarm_payloads", kind="object", description="Payloads too large for a message, by reference."
)
# Its own store: tenants write plans here, and must not be able to touch the services' payloads.
PLANS_STORE = BucketSpec(
    name="swarm_plans", kind="object", ttl_s=7 * 24 * 3600.0,
    description="Plans too large to travel inline, by reference: object 'plan-sha256-<hex digest>'.",
)  # fmt: skip
DISPATCHER_LEASES_BUCKET = BucketSpec(
    name="swarm_dispatcher_leases", ttl_s=6.0,
    description="Which dispatcher replica owns which results partition; entries expire unless renewed.",
)  # fmt: skip
SCRATCHPAD_BUCKET = BucketSpec(
    name="swarm_scratchpad", description="The scratchpad tool: values a run's agents share, key '<tenant>.<run_id>.<key>'."
)
MEMORY_BUCKET = BucketSpec(
    name="swarm_agent_memory", ttl_s=7 * 24 * 3600.0,
    description="Agents' memory: one entry per turn attempt, key Keys.memory_turn(tenant, run, agent, step, attempt).",
)  # fmt: skip
ALL_BUCKETS = (
    RUN_STATE_BUCKET, RUN_INDEX_BUCKET, OUTPUTS_BUCKET, PAYLOADS_STORE, DISPATCHER_LEASES_BUCKET, SCRATCHPAD_BUCKET,
    PLANS_STORE,
    MEMORY_BUCKET,
)  # fmt: skip
# Tenant-scoped data that workers hold: a dedicated pool's worker user may touch only its tenants' keys.
TENANT_KEYED_BUCKETS = (OUTPUTS_BUCKET, SCRATCHPAD_BUCKET, MEMORY_BUCKET)


def tenant_payloads_store(tenant: str) -> BucketSpec:
    """The payloads store of one tenant served by a dedicated worker pool.

    Object chunks are named by random nuids, so no subject permission can scope one store by tenant; and an
    object's meta is written with a roll-up, which a stream cannot allow for one subject only. A store per
    tenant makes both harmless: a dedicated pool's worker can at worst damage its own tenants' payloads.
    """
    return BucketSpec(
        name=f"{PAYLOADS_STORE.name}_{tenant}", kind="object",
        description=f"Payloads of tenant {tenant} (served by a dedicated worker pool), by reference.",
    )  # fmt: skip


class Keys:
    """Keys of the KV buckets and object stores, built from their parts (one place, so scoping them changes here)."""

    RUNNING_MARKERS_ALL = "running.>"  # every running marker in RUN_STATE_BUCKET
    LEASE_MEMBER_PREFIX = "member."  # DISPATCHER_LEASES_BUCKET: one entry per live dispatcher replica

    @staticmethod
    def run_checkpoint(run_id: str) -> str:
        """A run's checkpoint in RUN_STATE_BUCKET (the dispatcher's; workers read its phase)."""
        return run_id

    @staticmethod
    def running_marker(run_id: str) -> str:
        """RUN_STATE_BUCKET: the run is running; found by its results partition when a replica adopts it."""
        return f"running.p{result_partition(run_id)}.{run_id}"

    @staticmethod
    def running_markers(partition: int) -> str:
        """Filter matching the running markers of one results partition."""
        return f"running.p{partition}.*"

    @staticmethod
    def run_record(run_id: str) -> str:
        """A run's entry in RUN_INDEX_BUCKET."""
        return run_id

    @staticmethod
    def partition_lease(partition: int) -> str:
        """DISPATCHER_LEASES_BUCKET: which replica owns one results partition."""
        return f"p{partition}"

    @staticmethod
    def lease_member(instance_id: str) -> str:
        """DISPATCHER_LEASES_BUCKET: a live dispatcher replica (the owners share the partitions among these)."""
        return f"{Keys.LEASE_MEMBER_PREFIX}{instance_id}"

    @staticmethod
    def of_tenant(tenant: str) -> str:
        """Filter matching every key of one tenant in a bucket of TENANT_KEYED_BUCKETS (what grants scope)."""
        return f"{tenant}.>"

    @staticmethod
    def output(tenant: str, run_id: str, step_id: str) -> str:
        """A step's output in OUTPUTS_BUCKET."""
        return f"{tenant}.{run_id}.{step_id}"

    @staticmethod
    def scratchpad(tenant: str, run_id: str, key: str) -> str:
        """One value of a run's scratchpad in SCRATCHPAD_BUCKET."""
        return f"{tenant}.{run_id}.{key}"

    @staticmethod
    def of_run(tenant: str, run_id: str) -> str:
        """Filter matching every key of one run in OUTPUTS_BUCKET or SCRATCHPAD_BUCKET."""
        return f"{tenant}.{run_id}.>"

    @staticmethod
    def within_run(key: str, tenant: str, run_id: str) -> str:
        """What a run's key in OUTPUTS_BUCKET or SCRATCHPAD_BUCKET names within the run: a step id, a scratchpad key."""
        return key.removeprefix(f"{tenant}.{run_id}.")

    @staticmethod
    def memory_turn(tenant: str, run_id: str, agent_id: str, step_id: str, attempt: int) -> str:
        """One attempt of one agent's turn in MEMORY_BUCKET: written before the result, named once committed."""
        return f"{tenant}.{run_id}.{agent_id}.{step_id}.{attempt}"

    @staticmethod
    def payload_object(key: str, nonce: str) -> str:
        """PAYLOADS_STORE: a large value of a KV key; a fresh nonce per write, so an object is never rewritten."""
        return f"{key}.{nonce}"

    @staticmethod
    def plan_object(sha256: str) -> str:
        """PLANS_STORE: a plan, named by its content digest, so a reference cannot be ambiguous."""
        return f"plan-sha256-{sha256}"

    @staticmethod
    def sim_script(run_id: str, name: str) -> str:
        """A sim tool call's arguments stored by reference in PAYLOADS_STORE (load tests: spawn requests)."""
        return f"sim.{run_id}.{name}"


class MsgIds:
    """Nats-Msg-Id headers: JetStream drops a second message with the same id within the stream's window."""

    @staticmethod
    def run_event(run_id: str, kind: RunEventKind) -> str:
        """A lifecycle event of a run: each kind is published once per run, by whichever replica gets there."""
        return f"{run_id}.{kind}"

    @staticmethod
    def step_dispatch(run_id: str, step_id: str, attempt: int) -> str:
        """One attempt of a step on its pool's queue."""
        return f"{run_id}.{step_id}.{attempt}"


# Durable consumer names, one place for each.
PLANNER_CONSUMER = "planner"
DISPATCHER_PLANS_CONSUMER = "dispatcher-plans"
DISPATCHER_RESULTS_CONSUMER = "dispatcher-results"  # one durable per partition: "dispatcher-results-<p>"
# Results are split into partitions by run id; each partition is owned by one dispatcher replica.
# Widths of the event log's integer columns: a value beyond them is rejected, never silently clamped.
UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1
RESULT_EVENTS_MAX = 64  # step events a StepResult carries; a worker publishes any more itself
AGGREGATOR_CONSUMER = "aggregator"
WORKERS_CONSUMER_PREFIX = "workers"  # one durable per pool: "workers-<pool>"
RECORDER_CONSUMER = "recorder"
RECORDER_RUNS_CONSUMER = "recorder-runs"
RUN_INDEX_CONSUMER = "run-index"  # the recorder's: the one writer of RUN_INDEX_BUCKET
GATEWAY_QUEUE_GROUP = "gateway"

DEFAULT_TENANT = "default"
DEFAULT_POOL = "default"


# --------------------------------------------------------------------------- subjects


class Subjects:
    """Every subject of the system, built from its parts. Tokens are validated ids."""

    TASKS_ALL = "swarm.tasks.>"
    EVENTS_ALL = "swarm.events.>"
    RESULTS_ALL = "swarm.results.>"
    INFER = "swarm.infer.request"
    INFER_CANCEL = "swarm.infer.cancel"
    RECORDER_QUERY = "swarm.recorder.query"

    @staticmethod
    def task(tenant: str) -> str:
        """Where a tenant submits tasks."""
        return f"swarm.tasks.{tenant}"

    @staticmethod
    def steps(pool: str) -> str:
        """The work queue of one worker pool."""
        return f"swarm.steps.{pool}"

    @staticmethod
    def result(tenant: str, run_id: str) -> str:
        """Where workers report the results of a run's steps (in the run's partition, under its tenant)."""
        return f"swarm.results.{result_partition(run_id)}.{tenant}.{run_id}"

    @staticmethod
    def tenant_results(tenant: str) -> str:
        """Every result of one tenant's runs (what a dedicated pool's workers may publish)."""
        return f"swarm.results.*.{tenant}.*"

    @staticmethod
    def scope_of(subject: str) -> tuple[str, str]:
        """The (tenant, run_id) a result's or step events' subject names: its last two tokens."""
        *_, tenant, run_id = subject.split(".")
        return tenant, run_id

    @staticmethod
    def results_partition(partition: int | str) -> str:
        """Every result of one partition."""
        return f"swarm.results.{partition}.*.*"

    @staticmethod
    def run_event(tenant: str, run_id: str, kind: RunEventKind) -> str:
        """A lifecycle event of one run."""
        return f"swarm.run.{tenant}.{run_id}.{kind}"

    @staticmethod
    def run_all(tenant: str, run_id: str) -> str:
        """Every lifecycle event of one run (what a client follows)."""
        return f"swarm.run.{tenant}.{run_id}.>"

    @staticmethod
    def tenant_runs_all(tenant: str) -> str:
        """Every lifecycle event of every run of one tenant (what `swarm top --tenant` follows)."""
        return f"swarm.run.{tenant}.*.>"

    @staticmethod
    def tenant_delivery(tenant: str) -> str:
        """Prefix of the deliveries of one tenant's run events into its NATS account (`swarm.ops.security`)."""
        return f"swarm.deliver.{tenant}"

    @staticmethod
    def run_kind_all(kind: RunEventKind) -> str:
        """One kind of lifecycle event across all runs and tenants."""
        return f"swarm.run.*.*.{kind}"

    @staticmethod
    def step_event(tenant: str, run_id: str) -> str:
        """Step events of one run, for the recorder."""
        return f"swarm.events.step.{tenant}.{run_id}"

    @staticmethod
    def run_step_events(tenant: str, run_id: str) -> str:
        """Every step event of one run, single or batched (what a reader subscribes to)."""
        return f"swarm.events.*.{tenant}.{run_id}"

    @staticmethod
    def step_event_batch(tenant: str, run_id: str) -> str:
        """Several step events of one run in one message (a StepEventBatch), for the recorder."""
        return f"swarm.events.stepbatch.{tenant}.{run_id}"

    @staticmethod
    def inference_event() -> str:
        """Inference call events, for the recorder."""
        return "swarm.events.inference"

    @staticmethod
    def inference_event_batch() -> str:
        """Several inference call events in one message (an InferenceEventBatch), for the recorder."""
        return "swarm.events.inferencebatch"

    @staticmethod
    def health(service: str) -> str:
        """Core request/reply health probe of one service (every replica answers)."""
        return f"swarm.health.{service}"


# --------------------------------------------------------------------------- plans


class PlanPattern(StrEnum):
    """Pattern templates the planner can instantiate."""

    MAP = "map"
    MAP_REDUCE = "map-reduce"
    PIPELINE = "pipeline"
    VOTE = "vote"


class PlanSource(StrEnum):
    """Where a plan came from."""

    EXPLICIT = "explicit"
    LLM = "llm"
    TEMPLATE = "template"


class MemoryMode(StrEnum):
    """How an agent remembers its earlier turns."""

    NONE = "none"  # each turn sees only its inputs
    LAST_TURNS = "last_turns"  # the last `max_turns` turns, within `max_chars`
    SUMMARY = "summary"  # a rolling summary the model rewrites after every turn, plus the last turn


class MemoryPolicy(Contract):
    """What of an agent's earlier turns its next turn sees, within a context budget."""

    mode: MemoryMode = Field(default=MemoryMode.NONE, description="How the agent remembers its earlier turns.")
    max_turns: int = Field(default=4, ge=1, le=100, description="last_turns: how many of the latest turns are shown.")
    max_chars: int = Field(
        default=4000, ge=200, le=100_000, description="Characters of memory a prompt may hold; older turns go first."
    )
    seed: str = Field(
        default="", max_length=8000,
        description="Memory the agent starts with: what a spawning parent gives its child (shown on every turn).",
    )  # fmt: skip


# Options most steps and agents never use are left out of their serialization while at their default
# (`exclude_if`): a 4,000-step plan travels in one message, and each step again in its dispatch.
NO_MEMORY = MemoryPolicy()


class AgentSpec(Contract):
    """A sub-agent: an identity whose turns are steps."""

    id: Id = Field(description="Agent id, unique within the run.")
    role: str = Field(min_length=1, max_length=200, description="Short role name, e.g. 'researcher'.")
    instructions: str = Field(
        default="", max_length=8000, description="System instructions given to the agent on every step."
    )
    memory: MemoryPolicy = Field(
        default_factory=MemoryPolicy, exclude_if=lambda memory: memory == NO_MEMORY,
        description="What of its earlier turns each turn sees (default: none).",
    )  # fmt: skip


class SimToolCall(Contract):
    """For the 'sim' backend only: one tool call the simulated model makes."""

    tool: str = Field(min_length=1, max_length=64, description="The tool's registry name, e.g. 'spawn'.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The call's arguments.")
    arguments_ref: str | None = Field(
        default=None, max_length=256,
        description="Read the arguments from this key of the payloads object store instead (large spawn requests).",
    )  # fmt: skip


class StepSpec(Contract):
    """One turn of one agent, a node of the run's DAG."""

    id: Id = Field(description="Step id, unique within the run.")
    agent_id: Id = Field(description="The agent that takes this turn.")
    instruction: str = Field(min_length=1, max_length=16000, description="What the agent must do in this step.")
    depends_on: tuple[Id, ...] = Field(
        default=(),
        description="Steps whose outputs this step needs; it runs after all of them succeed.",
        # Stated in the schema, enforced by validate_plan against the configured limit (not here: internal
        # plans must fail with a PlanError, never a ValidationError).
        json_schema_extra={"maxItems": STEP_MAX_DEPENDS_ON},
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts before the step is dead-lettered.")
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Seconds one attempt may run.")
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Completion token budget of the step.")
    sim_latency_ms: float | None = Field(
        default=None,
        ge=0,
        description="For the 'sim' inference backend only: the simulated engine latency of this step.",
    )
    sim_fault: Literal["fail_once", "garbage"] | None = Field(
        default=None,
        description=(
            "For the 'sim' inference backend only (load tests): 'fail_once' fails the step's first attempt, "
            "'garbage' makes the model return an unusable output. Ignored by every other backend."
        ),
    )
    tools: tuple[str, ...] = Field(
        default=(), description="Tools the agent may call in this step, by registry name (e.g. 'python', 'spawn')."
    )
    sim_tool_calls: tuple[SimToolCall, ...] = Field(
        default=(), max_length=20, exclude_if=lambda calls: not calls,
        description="For the 'sim' backend only: the simulated model makes these tool calls in order, then answers. "
        "Ignored by every other backend.",
    )  # fmt: skip
    sim_echo: bool = Field(
        default=False, exclude_if=lambda echo: not echo,
        description="For the 'sim' backend only: the answer starts with the prompt the model received.",
    )  # fmt: skip
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the step's output must satisfy; a failing output gets a repair retry."
    )


class Plan(Contract):
    """Agents and the step DAG of one run."""

    agents: tuple[AgentSpec, ...] = Field(
        min_length=1, description="The run's sub-agents.", json_schema_extra={"maxItems": PLAN_MAX_AGENTS}
    )
    steps: tuple[StepSpec, ...] = Field(
        min_length=1, description="The run's steps (a DAG over depends_on).", json_schema_extra={"maxItems": PLAN_MAX_STEPS}
    )
    pattern: PlanPattern | None = Field(default=None, description="The template the plan follows, if any.")


# A plan whose JSON is over PLAN_INLINE_MAX_BYTES travels by reference (PlanRef): the SDK stores it in
# PLANS_STORE, and the planner does the same for the RunPlanned event.
PLAN_REF_MAX_BYTES = 64 * 1024 * 1024  # what a referenced plan may weigh (4,000 steps of 16,000 chars fit)
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class PlanRef(Contract):
    """A plan stored in the object store instead of travelling inline: found by its digest, checked by it."""

    sha256: str = Field(
        pattern=SHA256_PATTERN,
        description="Hex SHA-256 of the plan's JSON bytes, which are the object 'plan-sha256-<sha256>' of the "
        "object store 'swarm_plans'. Readers check the digest: an object that does not match is refused.",
    )
    size: int = Field(ge=1, le=PLAN_REF_MAX_BYTES, description="Length of the plan's JSON in bytes.")


# --------------------------------------------------------------------------- tasks


class RunPolicy(StrEnum):
    """How a run treats failed steps."""

    FAIL_FAST = "fail-fast"
    QUORUM = "quorum"


class TaskSubmission(Contract):
    """A task published to the queue: a goal to decompose, or an explicit plan."""

    # "A goal or a plan", in the schema: what JSON Schema can say of a submission is said there.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["goal"], "properties": {"goal": {"type": "string"}}},
                {"required": ["plan"], "properties": {"plan": {"type": "object"}}},
                {"required": ["plan_ref"], "properties": {"plan_ref": {"type": "object"}}},
            ]
        }
    )

    run_id: Id = Field(
        description="Run id chosen by the client, used once; the Nats-Msg-Id header must carry the same value."
    )
    tenant: Id = Field(
        default=DEFAULT_TENANT,
        description="Tenant the run belongs to: the subject's tenant token (the planner fills it in when absent).",
    )
    goal: str | None = Field(
        default=None,
        max_length=GOAL_MAX_CHARS,
        pattern=r"\S",
        description="What the swarm must achieve (decomposed by the planner); not blank.",
    )
    plan: Plan | None = Field(default=None, description="An explicit plan; when given, the planner only validates it.")
    plan_ref: PlanRef | None = Field(
        default=None,
        description="An explicit plan stored in the object store (for plans over 256 KiB of JSON); "
        "instead of `plan`, never with it.",
    )
    pattern: PlanPattern | None = Field(default=None, description="Ask the planner for this pattern template.")
    n_agents: int | None = Field(
        default=None, ge=1, le=PLAN_MAX_AGENTS, description="Preferred number of sub-agents."
    )
    priority: int = Field(default=0, ge=-10, le=10, description="Higher runs are scheduled first.")
    policy: RunPolicy = Field(default=RunPolicy.FAIL_FAST, description="Failure policy of the run.")
    quorum: float = Field(
        default=0.95, gt=0, le=1, description="Fraction of sub-agents whose final turn must succeed (quorum policy)."
    )
    submitted_at: Timestamp = Field(
        default_factory=utc_now,
        description="When the client submitted the task (with an offset); recorded with the run.",
    )
    labels: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=TASK_MAX_LABELS, description="Free-form labels, recorded with the run."
    )

    @model_validator(mode="after")
    def _goal_or_plan(self) -> TaskSubmission:
        if self.goal is None and self.plan is None and self.plan_ref is None:
            raise ValueError("a task needs a goal or a plan")
        if self.plan is not None and self.plan_ref is not None:
            raise ValueError("a task has a plan or a plan_ref, not both")
        return self


# --------------------------------------------------------------------------- steps


class MemoryRef(Contract):
    """One committed turn of an agent: the attempt of a step that succeeded."""

    step_id: Id = Field(description="The turn's step.")
    attempt: int = Field(ge=1, description="The attempt that succeeded.")


class SpawnBudget(Contract):
    """Room left under the run's limits, when the step was dispatched."""

    agents: int = Field(ge=0, description="Agents the run may still add.")
    steps: int = Field(ge=0, description="Steps the run may still add.")


class MemoryToolCall(Contract):
    """One tool call of a remembered turn."""

    tool: str = Field(description="The tool.")
    request: str = Field(description="The model's decision that called it (truncated).")
    result: str = Field(description="What the tool returned (truncated).")


class MemoryTurn(Contract):
    """One turn as its agent remembers it (MEMORY_BUCKET), written by the worker before the step's result."""

    step_id: Id = Field(description="The turn's step.")
    attempt: int = Field(ge=1, description="The attempt that wrote it.")
    instruction: str = Field(description="The turn's instruction.")
    output: str = Field(description="The turn's output (truncated).")
    tool_calls: tuple[MemoryToolCall, ...] = Field(default=(), description="Tool calls made in the turn.")
    summary: str = Field(
        default="", description="summary mode: the rolling summary of every turn up to and including this one."
    )


class StepDispatch(Contract):
    """A ready step on a worker pool's queue: everything a stateless worker needs."""

    run_id: Id = Field(description="The run.")
    tenant: Id = Field(description="Tenant of the run.")
    goal: str = Field(max_length=GOAL_MAX_CHARS, description="The run's goal, as context.")
    agent: AgentSpec = Field(description="The agent taking the turn.")
    step: StepSpec = Field(description="The step to execute.")
    attempt: int = Field(ge=1, description="1 for the first attempt, then 2, 3, ...")
    dispatched_at: datetime = Field(default_factory=utc_now, description="When the dispatcher queued it.")
    not_before: datetime | None = Field(
        default=None, description="A retry's backoff: workers hold the step until this time."
    )
    missing_inputs: tuple[Id, ...] = Field(
        default=(), description="Dependencies that failed (quorum policy): their outputs are missing."
    )
    inputs: dict[Id, str] = Field(
        default_factory=dict,
        description="Outputs of dependencies the dispatcher still holds, inline; the worker reads the others "
        "from the outputs bucket.",
    )
    memory: tuple[MemoryRef, ...] = Field(
        default=(),
        description="The agent's committed earlier turns this turn may see, oldest first (by the agent's memory "
        "policy); entries in MEMORY_BUCKET that are not named here (a killed attempt's) are never read.",
    )
    memory_omitted: int = Field(default=0, ge=0, description="Committed earlier turns the policy left out.")
    spawn_budget: SpawnBudget | None = Field(
        default=None, description="What this step may still add to its run with the spawn tool (when it has it)."
    )


class StepStatus(StrEnum):
    """Outcome of one attempt of a step."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class SpawnRequest(Contract):
    """Steps (and agents) a running step adds to its run.

    New steps run after the spawning step; steps that depended on the spawning step also wait
    for the new steps, so the DAG grows in place. Depends_on may name existing or new steps.
    """

    agents: tuple[AgentSpec, ...] = Field(default=(), description="New agents (ids unique in the run).")
    steps: tuple[StepSpec, ...] = Field(min_length=1, description="New steps (ids unique in the run).")


class StepResult(Contract):
    """A worker's report on one attempt of one step."""

    run_id: Id = Field(description="The run.")
    step_id: Id = Field(description="The step.")
    attempt: int = Field(ge=1, description="Which attempt this reports.")
    status: StepStatus = Field(description="Outcome.")
    output_key: str | None = Field(
        default=None, max_length=NAME_MAX_CHARS, description="Key of the output in the outputs bucket (Keys.output)."
    )
    output_preview: str = Field(default="", max_length=400, description="The first characters of the output.")
    output: str | None = Field(
        default=None,
        max_length=INLINE_OUTPUT_MAX_CHARS,
        description="The whole output when it is small, so dependents can get it inline (it is in the bucket too).",
    )
    error: str | None = Field(default=None, max_length=ERROR_MAX_CHARS, description="Why the attempt failed.")
    retryable: bool = Field(default=True, description="Whether another attempt may succeed.")
    prompt_tokens: int = Field(default=0, ge=0, description="Prompt tokens spent.")
    completion_tokens: int = Field(default=0, ge=0, description="Completion tokens spent.")
    started_at: datetime = Field(description="When the worker started the attempt.")
    finished_at: datetime = Field(description="When the worker finished the attempt.")
    worker_id: str = Field(max_length=NAME_MAX_CHARS, description="Which worker ran it.")
    spawn: SpawnRequest | None = Field(
        default=None, description="Agents and steps this step adds to its run (dynamic spawn)."
    )
    events: tuple[StepEvent, ...] = Field(
        default=(),
        max_length=RESULT_EVENTS_MAX,
        description="The attempt's step events not yet published (started, inference, tool calls): "
        "the dispatcher publishes them with its own, saving every step a message of its own.",
    )


class StepResultBatch(Contract):
    """Several results of one run in one message: what a worker's attempts finished while its last batch
    was being stored. Each result is applied as if it came alone; a single StepResult is accepted too."""

    results: tuple[StepResult, ...] = Field(min_length=1, max_length=RESULT_BATCH_MAX_RESULTS, description="The results.")


# --------------------------------------------------------------------------- run lifecycle


MISSING_AGENT_ERROR_CHARS = 500


class RunSummary(Contract):
    """Counts and totals of a finished run."""

    agents_count: int = Field(ge=0, description="Sub-agents in the plan.")
    steps_total: int = Field(ge=0, description="Steps in the plan.")
    steps_succeeded: int = Field(ge=0, description="Steps that succeeded.")
    steps_failed: int = Field(ge=0, description="Steps dead-lettered after their last attempt.")
    steps_cancelled: int = Field(default=0, ge=0, description="Steps never run because the run ended first.")
    retries_count: int = Field(ge=0, description="Attempts beyond the first, over all steps.")
    prompt_tokens: int = Field(ge=0, description="Prompt tokens over all steps (and synthesis).")
    completion_tokens: int = Field(ge=0, description="Completion tokens over all steps (and synthesis).")
    wall_ms: float = Field(ge=0, description="From submission to the final answer.")


class RunEventKind(StrEnum):
    """Every kind of run lifecycle event: a RunEvent's `kind` field, and the last token of its subject."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PLANNED = "planned"
    PROGRESS = "progress"
    EXECUTED = "executed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCEL = "cancel"  # a request (RunCancelRequested), not an outcome: see CANCELLED
    CANCELLED = "cancelled"


class RunEventBase(Contract):
    """Fields every run lifecycle event carries."""

    run_id: Id = Field(description="The run.")
    tenant: Id = Field(description="Tenant of the run.")
    at: Timestamp = Field(default_factory=utc_now, description="When it happened (with an offset).")


class RejectionCode(StrEnum):
    """Why one part of a task was rejected: the JSON Schema keyword it breaks, or a rule schemas cannot state."""

    # Broken JSON Schema keywords (the names ajv reports as `keyword`).
    TYPE = "type"
    REQUIRED = "required"
    ADDITIONAL_PROPERTIES = "additionalProperties"
    PATTERN = "pattern"
    FORMAT = "format"
    MIN_LENGTH = "minLength"
    MAX_LENGTH = "maxLength"
    MIN_ITEMS = "minItems"
    MAX_ITEMS = "maxItems"
    MAX_PROPERTIES = "maxProperties"
    PROPERTY_NAMES = "propertyNames"
    MINIMUM = "minimum"
    MAXIMUM = "maximum"
    EXCLUSIVE_MINIMUM = "exclusiveMinimum"
    EXCLUSIVE_MAXIMUM = "exclusiveMaximum"
    CONST = "const"
    ENUM = "enum"
    ANY_OF = "anyOf"
    # Rules of the message as a whole.
    JSON = "json"
    MSG_ID_MISSING = "msg_id_missing"
    MSG_ID_MISMATCH = "msg_id_mismatch"
    TENANT_MISMATCH = "tenant_mismatch"
    # Rules of a plan's graph.
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_AGENT = "unknown_agent"
    UNKNOWN_STEP = "unknown_step"
    CYCLE = "cycle"
    LIMIT = "limit"
    TOO_LARGE = "too_large"
    # A plan_ref that names no stored plan, or one whose size or digest does not match.
    PLAN_UNAVAILABLE = "plan_unavailable"
    # No plan could be made for a goal (a planner-side failure, not the client's).
    PLAN_FAILED = "plan_failed"
    INVALID = "invalid"


class RejectionReason(BaseModel):
    """One machine-readable reason a task was rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        max_length=1000,
        description="JSON Pointer (RFC 6901) into the submitted body, e.g. '/plan/steps/3/depends_on/0'; "
        "'' for the message as a whole (its headers, subject or bytes).",
    )
    code: RejectionCode = Field(description="Which rule it breaks.")
    message: str = Field(max_length=1000, description="The reason in words.")


class RunAccepted(RunEventBase):
    """The planner took the task and is planning it: the run exists (the run index shows it as planning)."""

    kind: Literal[RunEventKind.ACCEPTED] = Field(RunEventKind.ACCEPTED, description="Event kind, also the last subject token.")
    goal: str = Field(max_length=RECORD_GOAL_MAX_CHARS, description="The task's goal, cut as the run index shows it.")
    submitted_at: datetime = Field(description="When the task was submitted.")


class RunRejected(RunEventBase):
    """The task could not be accepted; nothing will run."""

    kind: Literal[RunEventKind.REJECTED] = Field(RunEventKind.REJECTED, description="Event kind, also the last subject token.")
    error: str = Field(
        max_length=ERROR_MAX_CHARS, description="Why, in words: every reason on one line (cut when too long)."
    )
    reasons: tuple[RejectionReason, ...] = Field(
        default=(),
        max_length=REJECTION_MAX_REASONS,
        description=f"Why, one entry per broken rule (the first {REJECTION_MAX_REASONS}).",
    )


class RunPlanned(RunEventBase):
    """The planner produced a validated plan; the dispatcher takes it from here."""

    # Each branch names its property's type, as TaskSubmission's do: a null `plan` is no plan, and ajv's
    # strict mode (clients/typescript) refuses a `required` whose property the branch does not define.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["plan"], "properties": {"plan": {"type": "object"}}},
                {"required": ["plan_ref"], "properties": {"plan_ref": {"type": "object"}}},
            ]
        }
    )

    kind: Literal[RunEventKind.PLANNED] = Field(RunEventKind.PLANNED, description="Event kind, also the last subject token.")
    goal: str = Field(max_length=GOAL_MAX_CHARS, description="The goal (or a description of the explicit plan).")
    plan: Plan | None = Field(
        default=None, description="The validated plan, when its JSON fits 256 KiB; else `plan_ref` names it."
    )
    plan_ref: PlanRef | None = Field(
        default=None, description="Where the validated plan is stored, when it is too large to travel inline."
    )
    agents_count: int = Field(default=0, ge=0, description="Agents in the plan (known without reading it).")
    steps_count: int = Field(default=0, ge=0, description="Steps in the plan (known without reading it).")
    source: PlanSource = Field(description="Where the plan came from.")
    note: str = Field(default="", max_length=ERROR_MAX_CHARS, description="Why a template was used, when it was.")
    llm_schema: Literal["sub-questions", "full-plan"] | None = Field(
        default=None,
        description="How the LLM planned, when it did: 'sub-questions' (a small model listed agents with a role "
        "and an instruction; code built the DAG) or 'full-plan' (the model wrote agents and steps).",
    )
    priority: int = Field(default=0, description="Run priority.")
    policy: RunPolicy = Field(default=RunPolicy.FAIL_FAST, description="Failure policy.")
    quorum: float = Field(
        default=0.95, description="Quorum policy: the fraction of sub-agents whose final turn must succeed."
    )
    submitted_at: datetime = Field(description="When the task was submitted.")

    @model_validator(mode="after")
    def _plan_or_ref(self) -> RunPlanned:
        if self.plan is None and self.plan_ref is None:
            raise ValueError("a planned run has a plan or a plan_ref")
        return self


class RunProgress(RunEventBase):
    """Throttled progress of a running run."""

    kind: Literal[RunEventKind.PROGRESS] = Field(RunEventKind.PROGRESS, description="Event kind, also the last subject token.")
    steps_total: int = Field(ge=0, description="Steps in the plan.")
    steps_queued: int = Field(ge=0, description="Steps on the work queue, not yet finished.")
    steps_succeeded: int = Field(ge=0, description="Steps succeeded.")
    steps_failed: int = Field(ge=0, description="Steps dead-lettered.")
    retries_count: int = Field(ge=0, description="Retries so far.")
    finished_step_ids: tuple[Id, ...] = Field(
        default=(),
        description="Steps that finished (succeeded or dead-lettered) since the run's previous progress event "
        "(after a dispatcher takeover: every finished step, again). With the plan, a follower can show each "
        "agent's turns done and its current step.",
    )


class MissingAgent(Contract):
    """A sub-agent whose final turn did not succeed: what a quorum run's answer is missing."""

    agent_id: Id = Field(description="The agent.")
    role: str = Field(default="", max_length=NAME_MAX_CHARS, description="Its role.")
    step_id: Id = Field(description="Its final turn (its last step in dependency order).")
    error: str = Field(default="", max_length=MISSING_AGENT_ERROR_CHARS, description="Its last error, or why its final turn did not run.")


class RunExecuted(RunEventBase):
    """Every step is finished; the aggregator synthesizes the answer."""

    kind: Literal[RunEventKind.EXECUTED] = Field(RunEventKind.EXECUTED, description="Event kind, also the last subject token.")
    goal: str = Field(max_length=GOAL_MAX_CHARS, description="The run's goal.")
    sink_step_ids: tuple[Id, ...] = Field(description="Succeeded steps no other step depends on: the synthesis input.")
    summary: RunSummary = Field(description="Totals of the step phase (wall_ms up to now).")
    submitted_at: datetime = Field(description="When the task was submitted.")
    missing_agents: tuple[MissingAgent, ...] = Field(
        default=(), description="Sub-agents whose final turn did not succeed (a quorum run goes on without them)."
    )


class RunCompleted(RunEventBase):
    """The final answer."""

    kind: Literal[RunEventKind.COMPLETED] = Field(RunEventKind.COMPLETED, description="Event kind, also the last subject token.")
    answer: str = Field(description="The synthesized answer.")
    summary: RunSummary = Field(description="Totals of the whole run.")
    missing_agents: tuple[MissingAgent, ...] = Field(
        default=(), description="Sub-agents whose final turn did not succeed: the answer was made without them."
    )


class RunFailed(RunEventBase):
    """The run ended without an answer."""

    kind: Literal[RunEventKind.FAILED] = Field(RunEventKind.FAILED, description="Event kind, also the last subject token.")
    error: str = Field(max_length=ERROR_MAX_CHARS, description="Why.")
    failed_step_ids: tuple[Id, ...] = Field(default=(), description="Steps dead-lettered.")
    summary: RunSummary | None = Field(default=None, description="Totals, when the run got that far.")
    missing_agents: tuple[MissingAgent, ...] = Field(
        default=(), description="Sub-agents whose final turn did not succeed, when the step phase ended."
    )


class RunCancelRequested(RunEventBase):
    """A client asks to cancel the run."""

    kind: Literal[RunEventKind.CANCEL] = Field(RunEventKind.CANCEL, description="Event kind, also the last subject token.")
    reason: str = Field(default="cancelled by client", max_length=ERROR_MAX_CHARS, description="Why.")


class RunCancelled(RunEventBase):
    """The run was cancelled: queued steps were dropped."""

    kind: Literal[RunEventKind.CANCELLED] = Field(RunEventKind.CANCELLED, description="Event kind, also the last subject token.")
    reason: str = Field(max_length=ERROR_MAX_CHARS, description="Why.")


RunEvent = Annotated[
    RunAccepted | RunRejected | RunPlanned | RunProgress | RunExecuted | RunCompleted | RunFailed | RunCancelRequested
    | RunCancelled,
    Field(discriminator="kind"),
]
TERMINAL_RUN_EVENTS = (RunEventKind.REJECTED, RunEventKind.COMPLETED, RunEventKind.FAILED, RunEventKind.CANCELLED)
RUN_EVENT: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)  # a run event of any kind, by its 'kind'


class RunStatus(StrEnum):
    """Status of a run in the run index."""

    PLANNING = "planning"
    RUNNING = "running"
    SYNTHESIZING = "synthesizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class RunRecord(Contract):
    """The run index entry (`swarm runs`)."""

    run_id: Id = Field(description="The run.")
    tenant: Id = Field(description="Tenant.")
    status: RunStatus = Field(description="Current status.")
    goal: str = Field(
        default="", max_length=RECORD_GOAL_MAX_CHARS, description="The goal's first characters (`record_goal`)."
    )
    steps_total: int = Field(default=0, ge=0, description="Steps in the plan.")
    agents_count: int = Field(default=0, ge=0, description="Agents in the plan.")
    updated_at: datetime = Field(default_factory=utc_now, description="Last change.")
    submitted_at: datetime | None = Field(default=None, description="When submitted.")
    error: str | None = Field(default=None, max_length=ERROR_MAX_CHARS, description="Why it failed or was rejected.")


# --------------------------------------------------------------------------- inference


class ChatMessage(Contract):
    """One chat message."""

    role: Literal["system", "user", "assistant"] = Field(description="Speaker.")
    content: str = Field(description="Text.")


class InferenceRequest(Contract):
    """A completion request to the inference gateway (core NATS request/reply)."""

    request_id: str = Field(max_length=NAME_MAX_CHARS, description="Unique id of the call.")
    model: str = Field(
        default="default", max_length=NAME_MAX_CHARS, description="Model name; 'default' is the gateway's configured model."
    )
    messages: tuple[ChatMessage, ...] = Field(min_length=1, description="The conversation.")
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Completion token budget.")
    temperature: float = Field(default=0.2, ge=0, le=2, description="Sampling temperature.")
    seed: int | None = Field(
        default=None, ge=0, lt=2**32, description="Sampling seed, for a reproducible or a different sample; None: any."
    )
    frequency_penalty: float | None = Field(
        default=None, ge=-2, le=2,
        description="OpenAI-style: lowers a token's score by this much per time it already occurs; None: the "
        "gateway's default.",
    )  # fmt: skip
    presence_penalty: float | None = Field(
        default=None, ge=-2, le=2,
        description="OpenAI-style: lowers a token's score by this much once it occurs at all; None: the gateway's "
        "default.",
    )  # fmt: skip
    repetition_penalty: float | None = Field(
        default=None, gt=0, le=2,
        description="Divides the score of recently generated tokens (llama.cpp's repeat_penalty; 1: none); None: "
        "the gateway's default.",
    )  # fmt: skip
    json_schema: dict[str, Any] | None = Field(default=None, description="Constrain the output to this JSON Schema.")
    run_id: str | None = Field(default=None, max_length=NAME_MAX_CHARS, description="Run on whose behalf, for accounting.")
    step_id: str | None = Field(
        default=None, max_length=NAME_MAX_CHARS, description="Step on whose behalf, for accounting."
    )
    caller: str = Field(
        default="worker", max_length=NAME_MAX_CHARS, description="Which service calls: planner, worker, aggregator."
    )
    sim_latency_ms: float | None = Field(default=None, ge=0, description="For the sim backend: force this latency.")
    sim_fault: Literal["error", "garbage"] | None = Field(
        default=None,
        description="For the sim backend only (load tests): fail with an engine error, or answer garbage.",
    )
    sim_tool_call: SimToolCall | None = Field(
        default=None,
        description="For the sim backend only: answer a tool-loop decision that calls this tool (arguments inline).",
    )
    sim_final: bool = Field(
        default=False, description="For the sim backend only: answer a tool-loop decision with action 'final'."
    )
    sim_echo: bool = Field(
        default=False, description="For the sim backend only: the answer starts with the prompt's last user message."
    )
    stream: bool = Field(
        default=False,
        description="Stream the completion: InferenceChunk messages to the reply subject instead of one "
        "InferenceResponse.",
    )
    deadline_ms: float | None = Field(
        default=None,
        gt=0,
        description="Budget in ms from when the gateway receives the request; past it, the request is "
        "answered 'deadline exceeded' (without running if it is still queued).",
    )
    priority: int | None = Field(
        default=None,
        ge=0,
        le=9,
        description="Scheduling class, 0 first; default from caller: planner and aggregator 0, others 5.",
    )


class InferenceCancel(Contract):
    """A caller no longer wants an inference call: every gateway replica hears it, the one running or queueing
    the call stops it (the engine aborts the generation) and answers nothing more."""

    request_id: str = Field(min_length=1, max_length=NAME_MAX_CHARS, description="The request_id of the call to stop.")


class InferenceResponse(Contract):
    """The gateway's answer."""

    request_id: str = Field(max_length=NAME_MAX_CHARS, description="The request's id.")
    ok: bool = Field(description="Whether a completion was produced.")
    content: str = Field(default="", description="The completion.")
    error: str | None = Field(default=None, max_length=ERROR_MAX_CHARS, description="Why not, when not ok.")
    model: str = Field(default="", max_length=NAME_MAX_CHARS, description="Model that served it.")
    backend: str = Field(default="", max_length=NAME_MAX_CHARS, description="Engine backend.")
    prompt_tokens: int = Field(default=0, ge=0, le=UINT32_MAX, description="Prompt tokens.")
    completion_tokens: int = Field(default=0, ge=0, le=UINT32_MAX, description="Completion tokens.")
    queue_ms: float = Field(default=0, ge=0, description="Time waiting for an engine slot.")
    duration_ms: float = Field(default=0, ge=0, description="Engine time.")


class InferenceChunk(Contract):
    """One piece of a streamed completion, sent to the request's reply subject; the last one has done=True."""

    request_id: str = Field(description="The request's id.")
    index: int = Field(ge=0, description="Position of this chunk in the stream, from 0.")
    delta: str = Field(default="", description="Text generated since the previous chunk.")
    done: bool = Field(default=False, description="Whether this is the last chunk.")
    response: InferenceResponse | None = Field(
        default=None,
        description="On the last chunk: the whole reply (content, tokens, timings) or the error.",
    )


# --------------------------------------------------------------------------- events (for ClickHouse)


class StepEventKind(StrEnum):
    """Every state transition a step can make."""

    QUEUED = "queued"
    STARTED = "started"
    TOOL_CALL = "tool_call"
    INFERENCE_DONE = "inference_done"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    SPAWNED = "spawned"
    CANCELLED = "cancelled"


class StepEvent(Contract):
    """One transition of one step, as recorded in ClickHouse's step_events."""

    event_id: str = Field(max_length=NAME_MAX_CHARS, description="Deterministic id; duplicates are dropped.")
    run_id: Id = Field(description="The run.")
    tenant: Id = Field(description="Tenant.")
    step_id: Id = Field(description="The step.")
    agent_id: str = Field(default="", max_length=NAME_MAX_CHARS, description="The agent.")
    attempt: int = Field(default=1, ge=0, le=UINT16_MAX, description="Attempt number.")
    kind: StepEventKind = Field(description="The transition.")
    at: datetime = Field(default_factory=utc_now, description="When it happened.")
    duration_ms: float = Field(default=0, ge=0, description="Duration of what ended here, if anything.")
    prompt_tokens: int = Field(default=0, ge=0, le=UINT32_MAX, description="Prompt tokens of what ended here.")
    completion_tokens: int = Field(default=0, ge=0, le=UINT32_MAX, description="Completion tokens of what ended here.")
    worker_id: str = Field(default="", max_length=NAME_MAX_CHARS, description="Which worker, if any.")
    error: str = Field(default="", max_length=ERROR_MAX_CHARS, description="Error text for failures.")
    attributes: dict[Annotated[str, Field(max_length=NAME_MAX_CHARS)], Annotated[str, Field(max_length=EVENT_ATTRIBUTE_MAX_CHARS)]] = Field(
        default_factory=dict, max_length=32, description="Free-form attributes (depends_on, spawned, tool, outcome, ...)."
    )


class StepEventBatch(Contract):
    """Several step events in one message: fewer messages, and less per-message work, for busy producers."""

    events: tuple[StepEvent, ...] = Field(
        min_length=1, max_length=2000, description="The events, each recorded as if published alone."
    )


# StepResult and its batch carry StepEvents, defined after them: their schemas are completed here, at import,
# not at their first use on a worker's or dispatcher's hot path.
StepResult.model_rebuild()
StepResultBatch.model_rebuild()


def _result_message_kind(value: object) -> str:
    return "batch" if isinstance(value, dict) and "results" in value else "single"


# What arrives on a results subject: a batch (what workers send) or one result (older workers, other clients).
ResultMessage = TypeAdapter(
    Annotated[
        Annotated[StepResultBatch, Tag("batch")] | Annotated[StepResult, Tag("single")],
        Discriminator(_result_message_kind),
    ]
)


def results_of(data: bytes) -> tuple[StepResult, ...]:
    """The results a message on a results subject carries (raises ValidationError when it is malformed)."""
    message = ResultMessage.validate_json(data)
    return message.results if isinstance(message, StepResultBatch) else (message,)


def step_event_id(run_id: str, step_id: str, attempt: int, kind: StepEventKind | str) -> str:
    """The deterministic id of a step transition (redelivery yields the same id)."""
    return f"{run_id}.{step_id}.{attempt}.{kind}"


def is_step_event_id(event: StepEvent) -> bool:
    """Whether an event's id is the one its fields derive (`step_event_id`, with an optional `.<seq>` of
    a numbered tool or model call): an event cannot pose as another, or dodge de-duplication."""
    base = step_event_id(event.run_id, event.step_id, event.attempt, event.kind)
    return event.event_id == base or (
        event.event_id.startswith(f"{base}.") and event.event_id[len(base) + 1 :].isdigit()
    )


class InferenceEvent(Contract):
    """One gateway call, as recorded in ClickHouse's inference_calls."""

    event_id: str = Field(max_length=NAME_MAX_CHARS, description="The request id.")
    run_id: str = Field(default="", max_length=NAME_MAX_CHARS, description="Run, if any.")
    step_id: str = Field(default="", max_length=NAME_MAX_CHARS, description="Step, if any.")
    caller: str = Field(default="", max_length=NAME_MAX_CHARS, description="Calling service.")
    model: str = Field(max_length=NAME_MAX_CHARS, description="Model.")
    backend: str = Field(max_length=NAME_MAX_CHARS, description="Backend.")
    ok: bool = Field(description="Whether it produced a completion.")
    error: str = Field(default="", max_length=ERROR_MAX_CHARS, description="Why not.")
    prompt_tokens: int = Field(default=0, ge=0, le=UINT32_MAX, description="Prompt tokens.")
    completion_tokens: int = Field(default=0, ge=0, le=UINT32_MAX, description="Completion tokens.")
    queue_ms: float = Field(default=0, ge=0, description="Admission queue time.")
    duration_ms: float = Field(default=0, ge=0, description="Engine time.")
    ttft_ms: float | None = Field(
        default=None, ge=0, description="Time from arrival to the first token (streamed replies; else unknown)."
    )
    at: datetime = Field(default_factory=utc_now, description="When it finished.")


class InferenceEventBatch(Contract):
    """Several inference call events in one message: what a busy gateway publishes."""

    events: tuple[InferenceEvent, ...] = Field(
        min_length=1, max_length=2000, description="The events, each recorded as if published alone."
    )


# --------------------------------------------------------------------------- channel registry (for proto/)


class Channel(BaseModel):
    """A subject pattern, the stream that holds it (if any), its message model and reply model."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    address: str
    stream: str | None
    message: Any
    description: str
    reply: Any = None


CHANNELS: tuple[Channel, ...] = (
    Channel(address=Subjects.task("{tenant}"), stream=TASKS.name, message=TaskSubmission,
            description="Submit a task (set the Nats-Msg-Id header to the run_id)."),
    Channel(address=Subjects.steps("{pool}"), stream=STEPS.name, message=StepDispatch,
            description="Ready steps for a worker pool."),
    Channel(address="swarm.results.{partition}.{tenant}.{run_id}", stream=RESULTS.name, message=StepResultBatch,
            description="Step results of one run for the dispatcher, in batches (a single StepResult is accepted too)."),
    Channel(address="swarm.run.{tenant}.{run_id}.{kind}", stream=RUNS.name, message=RunEvent,
            description="Run lifecycle events; the last token is the event's 'kind' field."),
    Channel(address=Subjects.step_event("{tenant}", "{run_id}"), stream=EVENTS.name, message=StepEvent,
            description="Step transitions for the event log."),
    Channel(address=Subjects.step_event_batch("{tenant}", "{run_id}"), stream=EVENTS.name, message=StepEventBatch,
            description="Several step transitions of one run in one message, for the event log."),
    Channel(address=Subjects.inference_event(), stream=EVENTS.name, message=InferenceEvent,
            description="Inference calls for the event log."),
    Channel(address=Subjects.inference_event_batch(), stream=EVENTS.name, message=InferenceEventBatch,
            description="Several inference calls in one message, for the event log."),
    Channel(address=Subjects.INFER, stream=None, message=InferenceRequest, reply=InferenceResponse,
            description="Core NATS request to the gateway's queue group; the reply is an InferenceResponse, "
            "or with stream=true a sequence of InferenceChunk messages to the reply subject."),
    Channel(address=Subjects.INFER_CANCEL, stream=None, message=InferenceCancel,
            description="Core NATS, every gateway replica: stop the named call (a caller cancelled, a run ended)."),
    Channel(address="{reply_inbox}", stream=None, message=InferenceChunk,
            description="A streamed inference reply: the chunks the gateway sends to the reply subject of a "
            "request with stream=true, in index order; the last one (done=true) carries the InferenceResponse."),
)
