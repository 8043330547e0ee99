"""Drive a scenario against a deployment and collect its figures: what `swarm loadtest` runs.

The deployment is, in order: the NATS URL given; else the local stack (`swarm up`) when one runs;
else an embedded stack that this module starts (sim backend, free ports, its home under
`.swarm/loadtest`) and stops at the end, leaving its logs in `<home>/logs/`.

Latency semantics: a scenario sets every step's `sim_latency_ms` to base latency x `--latency-scale`.
The sim gateway multiplies a forced latency by its own `SWARM_GATEWAY_SIM_LATENCY_SCALE` again, so a
deployment under test must keep that at 1 (its default); the embedded stack runs it at 1 (at 0 when
`--latency-scale 0`, which also makes the synthesis call instant).

Per run of a plan scenario:
- makespan_s: from the client seeing the run's 'planned' event to seeing its 'executed' event (the
  dispatcher's step phase); makespan_stream_s is the same span by the RUNS stream's own timestamps;
  wall_s: from submission to the terminal event (synthesis included).
- critical_path_s: the longest chain of simulated latencies through the plan (the makespan's lower
  bound); efficiency = critical_path_s / makespan_s (null at zero latency).
- step_latency_ms: p50 / p99 of the 'succeeded' step events' duration_ms (the worker's attempt time),
  read back from the EVENTS stream after the run.
- steps_lost: steps the run never accounted for: steps_total - (succeeded + failed + cancelled) by
  the final summary, or the steps without exactly one terminal event in EVENTS, whichever is larger.
- clean_floor_steps_per_s: `loadtest.floor` (driver and responder in processes of their own) on a fresh
  nats-server of the same binary, storage and replicas, with nothing else on it, just before the run;
  deployment_floor_steps_per_s: the same on the deployment's own NATS server, right after.
  floor_ratio = steps_per_s / clean_floor_steps_per_s (the target's figure); deployment_floor_ratio =
  steps_per_s / deployment_floor_steps_per_s. `floor_ratio_basis` says so in the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from loadtest import metrics
from loadtest.floor import FloorError, FloorResult, clean_nats, measure_floor_in_processes
from loadtest.gateway_sim import TARGET_ADDED_P50_MS
from loadtest.recorder_ingest import TARGET_EVENTS_PER_S
from loadtest.scenarios import DEFAULT_INSTRUCTION_CHARS, PlanLoad, Scenario, load_all
from swarm.client import MessageTooLarge, SwarmClient
from swarm.contracts import (
    DEFAULT_TENANT,
    PAYLOADS_STORE,
    RUN_EVENT,
    TERMINAL_RUN_EVENTS,
    RunCompleted,
    RunEventKind,
    RunExecuted,
    RunFailed,
    RunSummary,
    Subjects,
    TaskSubmission,
)
from swarm.ops.natsserver import cluster_ports
from swarm.ops.queries import RecorderNotRunning, query_via_recorder
from swarm.ops.stack import Stack
from swarm.settings import NatsSettings, StackSettings

DEFAULT_HOME = Path(".swarm/loadtest")
FLOOR_STEPS = 4000
FLOOR_IN_FLIGHT = 300
QUIET_TIMEOUT_S = 120.0
FLOOR_RATIO_BASIS = (
    "floor_ratio = steps_per_s / clean_floor_steps_per_s: the raw JetStream round trip on a fresh nats-server "
    "(same binary, storage and replicas, nothing else on it), driver and responder in processes of their own; "
    "deployment_floor_ratio divides by the same round trip on the deployment's server"
)


class LoadtestError(RuntimeError):
    """The load test could not run: no such scenario, no usable deployment, a plan too big."""


@dataclass(frozen=True)
class Targets:
    """What a load test must reach; a figure a scenario does not produce (or null, as efficiency at zero
    latency) is not checked."""

    efficiency: float = 0.95  # critical path / makespan, at least
    floor_ratio: float = 0.5  # steps/s over the raw JetStream round trip, at least
    added_latency_p50_ms: float = TARGET_ADDED_P50_MS  # the gateway's own share of a call, at most
    events_per_s: float = TARGET_EVENTS_PER_S  # the recorder's ingest rate, at least
    # fair-share: the small run's makespan next to the big one / alone, at most; the big run's steps/s next to
    # the small one / alone, at least.
    small_makespan_ratio: float = 1.5
    big_throughput_ratio: float = 0.9


@dataclass(frozen=True)
class LoadtestOptions:
    """Everything `swarm loadtest` takes."""

    scenario: str
    latency_scale: float = 1.0
    runs: int = 1
    seed: int = 0
    nats_url: str | None = None
    home: Path = DEFAULT_HOME
    workers: int = 2
    nats_cluster: int = 1  # embedded stack: NATS nodes (3: a JetStream cluster, streams at 3 replicas)
    worker_concurrency: int = 256
    scale_steps: float = 1.0
    run_timeout_s: float = 600.0
    floor: bool = True
    instruction_chars: int = DEFAULT_INSTRUCTION_CHARS  # of every agent's and step's instructions
    median_ms: float | None = None  # run-engine scenarios: median of the log-normal step latency (None: their own)
    targets: Targets = field(default_factory=Targets)


# --------------------------------------------------------------------------- deployment


@dataclass
class Deployment:
    """Where the load goes; `stack` is set when this process started it (and so stops it)."""

    nats_url: str
    kind: str  # "given", "local" or "embedded"
    stack: Stack | None = None

    @property
    def logs(self) -> Path | None:
        return self.stack.logs if self.stack else None

    def pids(self) -> dict[str, list[int]]:
        """Process ids by service name ('nats-server' included) when the stack is local; else empty."""
        state = (self.stack or Stack()).state() if self.kind != "given" else None
        if state is None:
            return {}
        pids: dict[str, list[int]] = {"nats-server": [int(n["pid"]) for n in state["nats_nodes"]]}
        for service in state["services"]:
            pids.setdefault(service["name"], []).append(int(service["pid"]))
        return pids

    def close(self) -> None:
        if self.stack is not None:
            self.stack.down()


@contextlib.contextmanager
def _environment(overrides: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside, then restore them."""
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def embedded_environment(options: LoadtestOptions) -> dict[str, str]:
    """Service settings of the embedded stack: sim latencies come from the steps; room for a 300-wide layer."""
    in_flight = options.workers * options.worker_concurrency
    return {
        "SWARM_GATEWAY_SIM_LATENCY_SCALE": "1" if options.latency_scale > 0 else "0",
        "SWARM_WORKER_CONCURRENCY": str(options.worker_concurrency),
        "SWARM_GATEWAY_MAX_QUEUE": str(max(256, in_flight + 64)),
        # The pool's capacity plus 1/8: ready steps beyond it wait in the dispatcher's fair scheduler.
        "SWARM_DISPATCHER_MAX_IN_FLIGHT": str(in_flight + in_flight // 8),
    }


def open_deployment(options: LoadtestOptions, console: Console) -> Deployment:
    """The given URL, the running local stack, or a freshly started embedded stack."""
    if options.nats_url:
        return Deployment(options.nats_url, "given")
    local = Stack().state() if options.nats_cluster == 1 else None  # a cluster is always embedded
    if local is not None:
        console.print(f"Using the running local stack at {local['nats_url']} (its own worker settings).")
        return Deployment(str(local["nats_url"]), "local")
    home = options.home.resolve()
    if Stack(StackSettings(home=home)).state() is not None:
        raise LoadtestError(f"a loadtest stack still runs from {home}: stop it with `SWARM_HOME={home} swarm down`")
    for stale in ("nats", "clickhouse", "logs", "stack.json"):  # each load test starts from empty streams
        path = home / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    n = options.nats_cluster
    # One node picks its own free ports as it listens (0, and it has no route port); a cluster's nodes name
    # each other's, so it takes free blocks.
    client_port, monitor_port, route_port = cluster_ports(n) if n > 1 else (0, 0, 0)
    settings = StackSettings(
        home=home, nats_port=client_port, nats_monitor_port=monitor_port, nats_cluster_port=route_port,
        nats_cluster=n, gateway_backend="sim", workers=options.workers,
    )  # fmt: skip
    stack = Stack(settings)
    with _environment(embedded_environment(options)), console.status("starting the embedded stack") as status:
        stack.up(on_step=lambda name: status.update(f"starting the embedded stack: {name}"), timeout_s=180)
    nodes = f" ({n} NATS nodes, streams at {min(3, n)} replicas)" if n > 1 else ""
    console.print(f"Embedded stack at {stack.nats_url}{nodes}, {options.workers} workers; logs in {stack.logs}")
    return Deployment(stack.nats_url, "embedded", stack)


# --------------------------------------------------------------------------- scenario context


@dataclass
class ScenarioContext:
    """What a scenario's `run` gets: the deployment, the options, and the shared run_plan driver."""

    scenario: str
    options: LoadtestOptions
    console: Console
    progress: Progress
    nats_url: str | None = None
    client: SwarmClient | None = None
    service_pids: dict[str, list[int]] = field(default_factory=dict)  # for CPU accounting, when local
    _gateway_checked: bool = field(default=False, repr=False)

    @property
    def latency_scale(self) -> float:
        return self.options.latency_scale

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def scale_steps(self) -> float:
        return self.options.scale_steps

    def scaled(self, n: int, least: int = 1) -> int:
        """`n` shrunk by --scale-steps (for smoke tests), at least `least`."""
        return max(least, round(n * self.options.scale_steps))

    async def run_plan(self, load: PlanLoad, tenant: str = DEFAULT_TENANT, priority: int = 0) -> dict[str, Any]:
        """Submit an explicit plan, follow it to the end, and measure it."""
        if self.client is None:
            raise LoadtestError(f"scenario {self.scenario} needs a deployment")
        if not self._gateway_checked:
            await check_sim_gateway(self.client)
            self._gateway_checked = True
        return await run_plan(self, self.client, load, tenant, priority)


async def check_sim_gateway(client: SwarmClient) -> None:
    """Refuse to send thousands of steps to a gateway that is not the sim backend."""
    try:
        reply = await client.bus.nc.request(Subjects.health("gateway"), b"", timeout=5.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        raise LoadtestError("no inference gateway answers its health probe: is the deployment up?") from exc
    backend = json.loads(reply.data).get("backend")
    if backend != "sim":
        raise LoadtestError(f"the gateway runs the {backend!r} backend: load tests need 'sim' (swarm up --backend sim)")


def new_loadtest_run_id(scenario: str) -> str:
    """A run id that says it is a load test: lt-<scenario>-<time>-<random>."""
    return f"lt-{scenario}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- one run of a plan


@dataclass
class RunTrace:
    """What the client saw of one run's lifecycle."""

    submitted: float = 0.0
    planned: float | None = None
    executed: float | None = None
    ended: float | None = None
    planned_stream_at: datetime | None = None
    executed_stream_at: datetime | None = None
    summary: RunSummary | None = None
    final_kind: str = ""
    error: str = ""
    done: int = 0


async def run_plan(
    ctx: ScenarioContext, client: SwarmClient, load: PlanLoad, tenant: str = DEFAULT_TENANT, priority: int = 0
) -> dict[str, Any]:
    """Submit `load` (its plan by reference when large), follow its events, then account for every step."""
    steps_total = len(load.final_plan.steps)
    if load.scripts:  # what the sim's scripted spawn calls read, by reference
        objects = await client.bus.js.object_store(PAYLOADS_STORE.name)
        for name, data in load.scripts.items():
            await objects.put(name, data)
    task = TaskSubmission(
        run_id=new_loadtest_run_id(ctx.scenario), tenant=tenant, plan=load.plan, policy=load.policy,
        quorum=load.quorum, priority=priority, labels={"loadtest": ctx.scenario},
    )  # fmt: skip
    bar = ctx.progress.add_task(f"{task.run_id}: submitting", total=steps_total)
    # Subscribe before submitting: the client's clock sees 'planned' when it happens, not on replay.
    sub = await client.bus.js.subscribe(
        Subjects.run_all(task.tenant, task.run_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    trace = RunTrace(submitted=time.perf_counter())
    started_at = datetime.now(UTC)
    cpu_before = cpu_seconds(ctx.service_pids)
    timed_out = False
    try:
        try:
            await client.submit_task(task)
        except MessageTooLarge as exc:
            raise LoadtestError(f"the {ctx.scenario} task cannot be sent: {exc}") from exc
        deadline = trace.submitted + ctx.options.run_timeout_s
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            try:
                msg = await sub.next_msg(timeout=min(remaining, 5.0))
            except nats.errors.TimeoutError:
                continue
            if _follow(msg, trace, ctx, bar, steps_total):
                break
    finally:
        await sub.unsubscribe()
    cpu_used = {name: round(cpu_seconds(ctx.service_pids).get(name, 0.0) - spent, 2) for name, spent in cpu_before.items()}
    if timed_out:
        trace.ended = time.perf_counter()
        trace.final_kind, trace.error = "timeout", f"no terminal event within {ctx.options.run_timeout_s:.0f}s"
        await client.cancel(task.run_id, task.tenant, reason="loadtest timeout")
    ctx.progress.update(bar, description=f"{task.run_id}: accounting")
    accounting = await read_step_events(client, task.run_id, [s.id for s in load.final_plan.steps])
    figures = run_figures(ctx, task.run_id, load, trace, accounting, started_at)
    figures["service_cpu_s"] = dict(sorted(cpu_used.items(), key=lambda item: -item[1]))
    ctx.progress.update(bar, description=f"{task.run_id}: checking the event log")
    figures.update(await recorded_figures(client, task.run_id, accounting))
    ctx.progress.update(bar, description=f"{task.run_id}: {trace.final_kind}")
    return figures


RECORDED_WAIT_S = 120.0  # for the recorder to store what EVENTS holds, before ClickHouse is counted


async def recorded_figures(client: SwarmClient, run_id: str, accounting: metrics.StepAccounting) -> dict[str, Any]:
    """Whether ClickHouse holds the run's step events as EVENTS does: each event once, each step's end once.

    Waits until the recorder has stored everything published (at most RECORDED_WAIT_S: a recorder still
    behind then counts what it has, and the missing events fail the run); reads through the recorder (its
    engine may be the in-process chdb). Without a recorder the figures say so, and nothing is checked.
    """
    terminal = ", ".join(f"'{kind.value}'" for kind in metrics.TERMINAL_STEP_KINDS)
    sql = (
        f"SELECT uniqExact(event_id) AS events, uniqExactIf(event_id, kind IN ({terminal})) AS ends, "
        f"uniqExactIf(step_id, kind IN ({terminal})) AS ended_steps FROM step_events WHERE run_id = {{run_id:String}}"
    )
    check = "every step event of EVENTS in ClickHouse, each step's end once"
    try:
        await client.wait_recorded(timeout_s=RECORDED_WAIT_S, poll_s=0.2)
    except TimeoutError:  # a recorder that is this far behind has not recorded the run: what it has is counted
        check += f" (the recorder had not caught up after {RECORDED_WAIT_S:.0f} s)"
    try:
        (row,) = await query_via_recorder(client.bus.nc, sql, {"run_id": run_id}, timeout_s=30.0)
    except (RecorderNotRunning, TimeoutError) as exc:
        return {"events_recorded": None, "events_not_recorded": None, "step_ends_recorded_twice": None,
                "recorded_check": f"not checked: {exc}"}  # fmt: skip
    return {
        "events_recorded": int(row["events"]),
        "events_not_recorded": len(accounting.event_ids) - int(row["events"]),
        "step_ends_recorded_twice": int(row["ends"]) - int(row["ended_steps"]),
        "recorded_check": check,
    }


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds so far of each service's processes (Linux /proc; replicas summed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for name, group in pids.items():
        for pid in group:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def _follow(msg: Msg, trace: RunTrace, ctx: ScenarioContext, bar: Any, steps_total: int) -> bool:
    """Take one run event into the trace and the progress bar; True at the terminal event."""
    now = time.perf_counter()
    kind = msg.subject.rsplit(".", 1)[-1]
    if kind == RunEventKind.PLANNED:  # not parsed: it carries the whole plan, ~1 MB at 4,000 steps
        trace.planned, trace.planned_stream_at = now, msg.metadata.timestamp
        ctx.progress.update(bar, description=f"{msg.subject.split('.')[3]}: running")
        return False
    event = RUN_EVENT.validate_json(msg.data)
    if event.kind == RunEventKind.PROGRESS:
        trace.done = event.steps_succeeded + event.steps_failed
        ctx.progress.update(bar, completed=trace.done)
    elif isinstance(event, RunExecuted):
        trace.executed, trace.executed_stream_at, trace.summary = now, msg.metadata.timestamp, event.summary
        ctx.progress.update(bar, completed=event.summary.steps_succeeded + event.summary.steps_failed,
                            description=f"{event.run_id}: synthesizing")  # fmt: skip
    elif event.kind in TERMINAL_RUN_EVENTS:
        trace.ended, trace.final_kind = now, event.kind
        if isinstance(event, RunCompleted | RunFailed) and event.summary is not None:
            trace.summary = event.summary
        trace.error = getattr(event, "error", "") or getattr(event, "reason", "")
        if trace.executed is None and event.kind != RunEventKind.REJECTED:
            trace.executed_stream_at = msg.metadata.timestamp
        return True
    return False


async def read_step_events(
    client: SwarmClient, run_id: str, step_ids: list[str], settle_s: float = 1.0
) -> metrics.StepAccounting:
    """Every step event of the run from EVENTS; read again once if some steps are unaccounted (late publishes)."""
    accounting = await _read_step_events(client, run_id)
    if accounting.unaccounted(step_ids):
        await asyncio.sleep(settle_s)
        accounting = await _read_step_events(client, run_id)
    return accounting


async def _read_step_events(client: SwarmClient, run_id: str) -> metrics.StepAccounting:
    accounting = metrics.StepAccounting()
    for event in await client.step_events(run_id, idle_s=5.0):
        accounting.add(event)
    return accounting


def run_figures(
    ctx: ScenarioContext,
    run_id: str,
    load: PlanLoad,
    trace: RunTrace,
    accounting: metrics.StepAccounting,
    started_at: datetime,
) -> dict[str, Any]:
    """The figures of one run."""
    step_ids = [s.id for s in load.final_plan.steps]
    summary = trace.summary
    steps_total = summary.steps_total if summary else len(step_ids)
    succeeded = summary.steps_succeeded if summary else 0
    failed = summary.steps_failed if summary else 0
    cancelled = summary.steps_cancelled if summary else 0
    # A rejected run was never accepted: nothing of it can be lost.
    unaccounted = accounting.unaccounted(step_ids) if trace.final_kind != RunEventKind.REJECTED else []
    if trace.final_kind == RunEventKind.REJECTED:
        steps_total = 0
    end_of_steps = trace.executed or trace.ended
    makespan_s = end_of_steps - trace.planned if trace.planned and end_of_steps else None
    stream_makespan_s = (
        (trace.executed_stream_at - trace.planned_stream_at).total_seconds()
        if trace.planned_stream_at and trace.executed_stream_at
        else None
    )
    critical_path_s = metrics.critical_path_s(load.depends_on, load.latency_s)
    steps_per_s = metrics.rate(steps_total, makespan_s)
    faulted = {s for s in load.faults if s in accounting.faulted}
    return {
        "scenario": ctx.scenario,
        "run_id": run_id,
        "status": trace.final_kind,
        "error": trace.error[:500],
        "agents": len(load.final_plan.agents),
        "steps_total": steps_total,
        "steps_succeeded": succeeded,
        "steps_failed": failed,
        "steps_cancelled": cancelled,
        "steps_lost": metrics.steps_lost(steps_total, succeeded, failed, cancelled, len(unaccounted)),
        "unaccounted_step_ids": unaccounted[:20],
        "retries_count": summary.retries_count if summary else accounting.retried,
        "makespan_s": _round(makespan_s),
        "makespan_stream_s": _round(stream_makespan_s),
        "wall_s": _round(trace.ended - trace.submitted if trace.ended else None),
        "critical_path_s": _round(critical_path_s),
        "efficiency": _round(metrics.efficiency(critical_path_s, makespan_s), 4),
        "steps_per_s": _round(steps_per_s, 1),
        "step_latency_ms": metrics.latency_summary(accounting.latencies_ms),
        "step_events": accounting.events,
        "faults_planned": len(load.faults),
        "faults_injected": len(faulted),
        **({"spawned_steps": len(accounting.spawned_by),
            "spawn_to_first_dispatch_ms": metrics.latency_summary(accounting.spawn_to_dispatch_ms())}
           if load.grows_into is not None else {}),
        "run_started_at": started_at.isoformat(),
        "run_finished_at": datetime.now(UTC).isoformat(),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


# --------------------------------------------------------------------------- the command


def machine_info() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }


def run_loadtest(options: LoadtestOptions, console: Console | None = None) -> dict[str, Any]:
    """Run one scenario `options.runs` times (starting and stopping a stack when needed); the report."""
    console = console or Console()
    scenarios = load_all()
    if options.scenario not in scenarios:
        raise LoadtestError(f"unknown scenario {options.scenario!r}; known: {', '.join(sorted(scenarios))}")
    scenario = scenarios[options.scenario]
    started_at = datetime.now(UTC)
    deployment = open_deployment(options, console) if scenario.needs_deployment else None
    import uvloop

    try:
        report = uvloop.run(_run(scenario, options, deployment, console))
    finally:
        if deployment is not None and deployment.stack is not None:
            with console.status("stopping the embedded stack"):
                deployment.close()
    report.update(
        {
            "latency_scale": options.latency_scale,
            "seed": options.seed,
            "scale_steps": options.scale_steps,
            "instruction_chars": options.instruction_chars,
            "median_ms": options.median_ms,
            "machine": machine_info(),
            "deployment": (
                {"kind": deployment.kind, "nats_url": deployment.nats_url,
                 "logs": str(deployment.logs) if deployment.logs else None,
                 **({"workers": options.workers, "worker_concurrency": options.worker_concurrency,
                     "nats_nodes": options.nats_cluster}
                    if deployment.kind == "embedded" else {})}
                if deployment else None
            ),
            "targets": {"steps_lost": 0, **asdict(options.targets)},
            "started_at": started_at.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
        }
    )  # fmt: skip
    return report


async def _run(
    scenario: Scenario, options: LoadtestOptions, deployment: Deployment | None, console: Console
) -> dict[str, Any]:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    client = await SwarmClient.connect(NatsSettings(url=deployment.nats_url)) if deployment else None
    runs: list[dict[str, Any]] = []
    try:
        with Progress(*columns, console=console) as progress:
            ctx = ScenarioContext(
                scenario.name, options, console, progress, deployment.nats_url if deployment else None, client,
                deployment.pids() if deployment else {},
            )
            for _ in range(options.runs):
                if client is not None:
                    await wait_until_quiet(client, progress)
                floors = None
                if deployment is not None and scenario.measures_floor and options.floor:
                    floors = await _floors(deployment.nats_url, options, progress)
                figures = await scenario.run(ctx)
                if floors is not None:
                    figures.update(floor_figures(figures.get("steps_per_s"), *floors))
                runs.append(figures)
    finally:
        if client is not None:
            await client.close()
    report = metrics.combine_runs(runs)
    report["scenario"] = scenario.name
    report["run_ids"] = [r["run_id"] for r in runs if "run_id" in r]
    report.pop("run_id", None)
    if len(runs) > 1:  # each run's floor details stay in `runs`
        report.pop("clean_floor", None)
        report.pop("deployment_floor", None)
        report["runs"] = runs
    return report


async def wait_until_quiet(client: SwarmClient, progress: Progress, timeout_s: float = QUIET_TIMEOUT_S) -> float:
    """Wait until the recorder has stored every event so far: the last run's ingest must not slow the next one.

    Returns the seconds waited (0 when the deployment has no recorder consumer).
    """
    started = time.perf_counter()
    bar = None
    while time.perf_counter() - started < timeout_s:
        backlog = await client.recorder_backlog()
        if not backlog:
            break
        if bar is None:
            bar = progress.add_task("waiting for the recorder to catch up", total=backlog)
        progress.update(bar, description=f"waiting for the recorder to catch up ({backlog} events)")
        await asyncio.sleep(0.5)
    if bar is not None:
        progress.remove_task(bar)
    return time.perf_counter() - started


async def _floors(url: str, options: LoadtestOptions, progress: Progress) -> tuple[FloorResult, FloorResult]:
    """The clean floor (a fresh nats-server like the deployment's), then the deployment's floor."""
    steps = max(200, round(FLOOR_STEPS * options.scale_steps))
    # The floor's streams replicated as the stack's are: the ratio compares like with like.
    replicas = min(3, options.nats_cluster)
    bar = progress.add_task("raw JetStream round trip on a fresh nats-server (clean floor)", total=None)
    try:
        with clean_nats(replicas, options.home.resolve()) as clean_url:
            settings = NatsSettings(url=clean_url, stream_replicas=replicas)
            clean = await measure_floor_in_processes(clean_url, steps, FLOOR_IN_FLIGHT, settings)
        progress.update(bar, description="raw JetStream round trip on the deployment's server (deployment floor)")
        settings = NatsSettings(url=url, stream_replicas=replicas)
        deployed = await measure_floor_in_processes(url, steps, FLOOR_IN_FLIGHT, settings)
    except (FloorError, RuntimeError, TimeoutError) as exc:
        raise LoadtestError(f"the raw floor could not be measured: {exc}") from exc
    finally:
        progress.update(bar, description="raw JetStream round trips (floors): done", total=1, completed=1)
    return clean, deployed


def floor_figures(steps_per_s: float | None, clean: FloorResult, deployed: FloorResult) -> dict[str, Any]:
    """Both floors and both ratios of a run; floor_ratio is the clean one's."""
    return {
        "clean_floor_steps_per_s": round(clean.steps_per_s, 1),
        "deployment_floor_steps_per_s": round(deployed.steps_per_s, 1),
        "floor_ratio": _round(metrics.ratio(steps_per_s, clean.steps_per_s), 4),
        "deployment_floor_ratio": _round(metrics.ratio(steps_per_s, deployed.steps_per_s), 4),
        "floor_ratio_basis": FLOOR_RATIO_BASIS,
        "clean_floor": asdict(clean),
        "deployment_floor": asdict(deployed),
    }


def failed_targets(report: dict[str, Any], targets: Targets | None = None) -> list[str]:
    """Why the load test missed: lost steps, runs that did not complete, and (given `targets`) every
    figure on the wrong side of its target, each named with both numbers."""
    problems = []
    if report.get("steps_lost"):
        problems.append(f"{report['steps_lost']} steps lost")
    for run in report.get("runs", [report]):
        if run.get("status") not in (None, RunEventKind.COMPLETED):
            problems.append(f"run {run.get('run_id', '')} {run['status']}: {run.get('error', '')}".rstrip(": "))
    if targets is None:
        return problems
    minimums = [
        ("efficiency", targets.efficiency), ("events_per_s", targets.events_per_s),
        ("big_throughput_ratio", targets.big_throughput_ratio),
    ]  # fmt: skip
    if not report.get("latency_scale"):  # with latencies, steps/s is bounded by them, not by the messaging
        minimums.append(("floor_ratio", targets.floor_ratio))
    for key, least in minimums:
        value = report.get(key)
        if isinstance(value, int | float) and value < least:
            problems.append(f"{key} {value:g} below its target {least:g}")
    small_ratio = report.get("small_makespan_ratio")
    if isinstance(small_ratio, int | float) and small_ratio > targets.small_makespan_ratio:
        problems.append(f"small_makespan_ratio {small_ratio:g} above its target {targets.small_makespan_ratio:g}")
    added_p50 = (report.get("added_latency_ms") or {}).get("p50")
    if isinstance(added_p50, int | float) and added_p50 > targets.added_latency_p50_ms:
        problems.append(f"gateway added latency p50 {added_p50:g} ms above its target {targets.added_latency_p50_ms:g} ms")
    if report.get("events_lost"):
        problems.append(f"{report['events_lost']} events lost by the recorder")
    if report.get("events_not_recorded"):
        problems.append(f"{report['events_not_recorded']} step events of EVENTS missing in ClickHouse")
    if report.get("step_ends_recorded_twice"):
        problems.append(f"{report['step_ends_recorded_twice']} step ends recorded twice in ClickHouse")
    errors = report.get("errors")
    if isinstance(errors, dict) and errors:
        problems.append(f"gateway calls failed: {', '.join(f'{n} {reason}' for reason, n in errors.items())}")
    return problems


TABLE_ROWS = (
    ("status", "status"), ("steps_total", "steps"), ("steps_succeeded", "succeeded"), ("steps_failed", "failed"),
    ("steps_lost", "lost"), ("retries_count", "retries"), ("faults_injected", "faults injected"),
    ("makespan_s", "makespan (s)"), ("critical_path_s", "critical path (s)"), ("efficiency", "efficiency"),
    ("steps_per_s", "steps/s"), ("step_latency_ms.p50", "step latency p50 (ms)"),
    ("step_latency_ms.p99", "step latency p99 (ms)"), ("clean_floor_steps_per_s", "clean floor (steps/s)"),
    ("deployment_floor_steps_per_s", "deployment floor (steps/s)"), ("floor_ratio", "floor ratio (clean floor)"),
    ("deployment_floor_ratio", "floor ratio (deployment floor)"), ("wall_s", "submit → completed (s)"),
    ("events_not_recorded", "step events missing in ClickHouse"),
    ("step_ends_recorded_twice", "step ends twice in ClickHouse"),
)  # fmt: skip


def _cell(record: dict[str, Any], key: str) -> str:
    value: Any = record
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or value == {}:
        return "—"
    if isinstance(value, dict):  # service -> CPU seconds: the three busiest
        return "\n".join(f"{name} {seconds:.1f}" for name, seconds in list(value.items())[:3])
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def report_table(report: dict[str, Any]) -> Table:
    """The figures as a table; one column per run when there were several, then the combined one."""
    runs = report.get("runs", [])
    title = f"swarm loadtest {report['scenario']} — latency scale {report.get('latency_scale')}"
    if report.get("median_ms"):
        title += f", median step {report['median_ms']:g} ms"
    table = Table(title=title)
    table.add_column("metric")
    for n, _ in enumerate(runs, 1):
        table.add_column(f"run {n}", justify="right")
    table.add_column("median / total" if runs else "value", justify="right")
    if report.get("floor_ratio_basis"):
        table.caption = (
            "floor ratio = steps/s ÷ clean floor (a fresh nats-server: same binary, storage and replicas, nothing "
            "else on it; driver and responder in their own processes). The deployment floor is the same round "
            "trip on the deployment's server."
        )
    known = {key for key, _ in TABLE_ROWS}
    rows = list(TABLE_ROWS) + [  # figures of scenarios other than the plan ones
        (key, key) for key, value in report.items()
        if key not in known and key.split(".")[0] not in known and isinstance(value, int | float) and not isinstance(value, bool)
        and key not in ("latency_scale", "median_ms", "seed", "scale_steps", "agents", "steps_cancelled", "step_events",
                        "faults_planned", "makespan_stream_s")
    ]  # fmt: skip
    rows.append(("service_cpu_s", "CPU s during the run"))
    for key, label in rows:
        cells = [_cell(run, key) for run in runs] + [_cell(report, key)]
        if all(c == "—" for c in cells):
            continue
        table.add_row(label, *cells)
    return table
