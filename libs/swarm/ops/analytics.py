"""The questions swarm users ask of the event log, answered by queries (and a little Python).

Per run: makespan, critical path, parallelism over time, stragglers, retries and failures by
reason, tokens and cost by phase (planning, steps, synthesis), agent and model, time queued versus
running; and, read from NATS rather than the event log, its final answer (RUNS) and every step's
output (the outputs bucket). Across runs: runs per minute, success rate, steps/s, step latency
quantiles, gateway time to first token and tokens/s.

Every function takes a `Query` (SQL with `{name:Type}` parameters -> rows), so the same code reads
through the recorder (`recorder_query`, local mode; results of any size come back in parts) or from
an `EventLog` (`eventlog_query`).
Also here: `expand_grafana_macros`, the ClickHouse datasource plugin's macros, so tests can run
every dashboard panel's SQL against the real engine.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from swarm.bus import Bus
from swarm.contracts import OUTPUTS_BUCKET, RUNS, Keys, MissingAgent, RunCompleted, RunFailed, Subjects
from swarm.dag import PlanError, longest_chain
from swarm.eventlog import EventLog
from swarm.ops.queries import query_via_recorder
from swarm.payloads import PayloadMissing, Payloads

Query = Callable[[str, Mapping[str, Any]], Awaitable[list[dict[str, Any]]]]

STRAGGLER_FACTOR = 2.0  # a step is a straggler when it ran this many times the run's median
STRAGGLER_MIN_MS = 20.0  # ... and at least this much longer (sub-ms sim steps are not stragglers)
MAX_OUTPUT_CHARS = 20_000  # of one step's output in a report
OUTPUTS_BUDGET_CHARS = 16_000_000  # of all outputs in a report: past it, each gets an equal share ...
MIN_OUTPUT_CHARS = 500  # ... but at least this much
PHASES = ("planning", "steps", "synthesis")  # the phases of a run's inference calls, in order


def recorder_query(nc: NatsClient, timeout_s: float = 30.0) -> Query:
    """Queries answered by the recorder over NATS (local mode: it owns the chdb directory)."""

    async def query(sql: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await query_via_recorder(nc, sql, parameters, timeout_s=timeout_s)

    return query


def eventlog_query(eventlog: EventLog) -> Query:
    """Queries on an open EventLog (the recorder itself, tests, a ClickHouse server)."""

    async def query(sql: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(eventlog.query, sql, parameters)

    return query


# --------------------------------------------------------------------------- SQL

# Times leave the engine as epoch microseconds: naive datetimes would depend on the reader's zone.
STEPS_SQL = """
SELECT step_id, agent_id, attempts_count, outcome, run_ms, queued_ms, prompt_tokens, completion_tokens,
       toUnixTimestamp64Micro(queued_at) AS queued_us, toUnixTimestamp64Micro(started_at) AS started_us,
       toUnixTimestamp64Micro(finished_at) AS finished_us, depends_on_attr
FROM step_spans WHERE run_id = {run:String} ORDER BY started_at
"""
PLAN_SQL = "SELECT step_id, depends_on FROM plan_steps FINAL WHERE run_id = {run:String}"
# Dynamic spawn: when the run grew, and by how many steps (the dispatcher's 'spawned' events).
GROWTH_SQL = """
SELECT toUnixTimestamp64Micro(at) AS at_us, length(splitByChar(',', attributes['spawned'])) AS added_count
FROM step_events FINAL WHERE run_id = {run:String} AND kind = 'spawned' ORDER BY at
"""
RUN_SQL = """
SELECT run_id, tenant, status, goal, error, agents_count, steps_total, steps_succeeded, steps_failed,
       steps_cancelled, retries, prompt_tokens, completion_tokens, wall_ms,
       toUnixTimestamp64Micro(submitted_at) AS submitted_us, toUnixTimestamp64Micro(finished_at) AS finished_us
FROM runs FINAL WHERE run_id = {run:String}
"""
FAILURES_SQL = """
SELECT kind, substring(splitByChar('\\n', error)[1], 1, 160) AS reason, count() AS events_count,
       uniqExact(step_id) AS steps_count
FROM step_events FINAL
WHERE run_id = {run:String} AND kind IN ('failed', 'dead_lettered', 'cancelled', 'retried')
GROUP BY kind, reason ORDER BY events_count DESC
"""
# Every inference call of the run, by phase and by whom: a step's calls go to its agent; calls made
# outside any step (planning, synthesis) to the service that made them. Those few rows come first.
TOKENS_SQL = """
SELECT multiIf(c.step_id != '', 'steps', c.caller = 'planner', 'planning', c.caller = 'aggregator', 'synthesis',
               c.caller != '', c.caller, 'other') AS phase,
       if(c.step_id != '', s.agent_id, c.caller) AS agent_id, c.model AS model, count() AS calls_count,
       countIf(NOT c.ok) AS failed_count, sum(c.prompt_tokens) AS prompt_tokens,
       sum(c.completion_tokens) AS completion_tokens, sum(c.cost_usd) AS cost_usd
FROM (SELECT * FROM inference_calls FINAL WHERE run_id = {run:String}) AS c
LEFT JOIN (SELECT step_id, any(agent_id) AS agent_id FROM step_events FINAL WHERE run_id = {run:String}
           GROUP BY step_id) AS s ON s.step_id = c.step_id
GROUP BY phase, agent_id, model ORDER BY phase = 'steps', completion_tokens DESC, agent_id
"""
INFERENCE_SQL = """
SELECT count() AS calls_count, countIf(NOT ok) AS failed_count, avg(queue_ms) AS queue_ms_avg,
       quantileIf(0.5)(ttft_ms, ttft_ms IS NOT NULL) AS ttft_ms_p50,
       sum(completion_tokens) / greatest(sum(duration_ms) / 1000, 0.001) AS tokens_per_s
FROM inference_calls FINAL WHERE run_id = {run:String}
"""
STATS_SQL = """
SELECT count() AS runs_count, countIf(status = 'completed') AS completed_count,
       countIf(status IN ('failed', 'rejected')) AS failed_count, countIf(status = 'cancelled') AS cancelled_count,
       countIf(status NOT IN ('completed', 'failed', 'rejected', 'cancelled')) AS active_count,
       sum(steps_succeeded) AS steps_succeeded, sum(retries) AS retries_count,
       toUnixTimestamp64Micro(min(submitted_at)) AS first_us, toUnixTimestamp64Micro(max(finished_at)) AS last_us
FROM runs FINAL WHERE submitted_at >= now64(6) - toIntervalSecond({window_s:UInt32})
"""
RUNS_PER_MINUTE_SQL = """
SELECT toStartOfMinute(submitted_at) AS minute, count() AS runs_count,
       countIf(status = 'completed') AS completed_count
FROM runs FINAL WHERE submitted_at >= now64(6) - toIntervalSecond({window_s:UInt32})
GROUP BY minute ORDER BY minute
"""
STEP_LATENCY_SQL = """
SELECT count() AS steps_count, quantiles(0.5, 0.95, 0.99)(duration_ms) AS run_ms_q,
       toUnixTimestamp64Micro(min(at)) AS first_us, toUnixTimestamp64Micro(max(at)) AS last_us
FROM step_events FINAL
WHERE kind = 'succeeded' AND at >= now64(6) - toIntervalSecond({window_s:UInt32})
"""
GATEWAY_SQL = """
SELECT count() AS calls_count, countIf(NOT ok) AS failed_count,
       quantilesIf(0.5, 0.95, 0.99)(ttft_ms, ttft_ms IS NOT NULL) AS ttft_ms_q,
       quantiles(0.5, 0.95, 0.99)(queue_ms) AS queue_ms_q,
       quantilesIf(0.5, 0.95)(completion_tokens / (duration_ms / 1000), duration_ms > 0 AND ok) AS tokens_per_s_q,
       sum(cost_usd) AS cost_usd
FROM inference_calls FINAL WHERE at >= now64(6) - toIntervalSecond({window_s:UInt32})
"""


# --------------------------------------------------------------------------- per run


@dataclass(frozen=True)
class StepSpan:
    """One step as it ran: its last attempt's times (epoch seconds) and outcome."""

    step_id: str
    agent_id: str
    outcome: str
    attempts_count: int
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    run_ms: float
    queued_ms: float
    prompt_tokens: int
    completion_tokens: int
    depends_on: tuple[str, ...] = ()

    @property
    def span_ms(self) -> float:
        """Start to finish of the last attempt (0 when it never started)."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(0.0, (self.finished_at - self.started_at) * 1000)


@dataclass(frozen=True)
class TokenTotal:
    """The inference calls of one phase of a run (planning, steps, synthesis) and their tokens."""

    phase: str
    calls_count: int
    failed_count: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass
class RunAnalysis:
    """Everything `swarm report` shows about one run."""

    run_id: str
    run: dict[str, Any]
    steps: list[StepSpan]
    makespan_ms: float
    critical_path: list[str]
    critical_path_ms: float
    lower_bound_ms: float
    concurrency: list[tuple[float, int]]
    stragglers: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    tokens: list[dict[str, Any]]
    inference: dict[str, Any]
    queued_ms_total: float
    running_ms_total: float
    notes: list[str] = field(default_factory=list)
    answer: str | None = None  # the final answer (RunCompleted), when the run has one and it was read
    outputs: dict[str, str] = field(default_factory=dict)  # step id -> output (cut by `cut_outputs`)
    token_totals: list[TokenTotal] = field(default_factory=list)  # every inference call, by phase
    summary_tokens: tuple[int, int] | None = None  # (prompt, completion) as the run's summary counts them
    missing_agents: list[dict[str, Any]] = field(default_factory=list)  # agents whose final turn failed (MissingAgent)
    growth: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the first start, steps known)

    @property
    def peak_concurrency(self) -> int:
        """Most steps running at once."""
        return max((n for _, n in self.concurrency), default=0)


def _seconds(us: int | None) -> float | None:
    return None if us is None else us / 1e6


def spans_from_rows(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Sequence[str]]) -> list[StepSpan]:
    """StepSpans from STEPS_SQL rows; dependencies from the plan, else the 'queued' event's attribute."""
    spans = []
    for row in rows:
        # The 'queued' event's dependencies first: a spawn may have added to what the plan said.
        deps = tuple(row.get("depends_on_attr") or ()) or tuple(plan.get(row["step_id"], ()))
        spans.append(
            StepSpan(
                step_id=row["step_id"], agent_id=row["agent_id"], outcome=row["outcome"] or "",
                attempts_count=int(row["attempts_count"]), queued_at=_seconds(row["queued_us"]),
                started_at=_seconds(row["started_us"]), finished_at=_seconds(row["finished_us"]),
                run_ms=float(row["run_ms"] or 0), queued_ms=max(0.0, float(row["queued_ms"] or 0)),
                prompt_tokens=int(row["prompt_tokens"]), completion_tokens=int(row["completion_tokens"]),
                depends_on=deps,
            )
        )
    return spans


def observed_critical_path(spans: Sequence[StepSpan]) -> list[str]:
    """The chain of steps that set a finished run's makespan, as it ran: from the last step to finish, walk back through the
    dependency that finished last (the one it waited for), to a step without dependencies. First step first."""
    by_id = {s.step_id: s for s in spans if s.finished_at is not None}
    if not by_id:
        return []
    current: StepSpan | None = max(by_id.values(), key=lambda s: s.finished_at or 0.0)
    path: list[str] = []
    while current is not None and current.step_id not in path:
        path.append(current.step_id)
        deps = [by_id[d] for d in current.depends_on if d in by_id]
        current = max(deps, key=lambda s: s.finished_at or 0.0) if deps else None
    return path[::-1]


def lower_bound_ms(spans: Sequence[StepSpan]) -> float:
    """The longest dependency chain by the steps' own running times (`dag.longest_chain`): no scheduler
    could beat it. A dependency that never ran counts 0; a recorded cycle (a forged event log) has no bound."""
    ran = {s.step_id for s in spans}
    depends_on = {s.step_id: tuple(d for d in s.depends_on if d in ran and d != s.step_id) for s in spans}
    try:
        length, _ = longest_chain(depends_on, {s.step_id: s.run_ms for s in spans})
    except PlanError:
        return 0.0
    return length


def concurrency(spans: Sequence[StepSpan], points: int = 200) -> list[tuple[float, int]]:
    """(seconds since the first start, steps running) sampled evenly over the run."""
    intervals = [(s.started_at, s.finished_at) for s in spans if s.started_at is not None and s.finished_at is not None]
    if not intervals:
        return []
    starts = sorted(a for a, _ in intervals)
    ends = sorted(b for _, b in intervals)
    t0, t1 = starts[0], ends[-1]
    step = max((t1 - t0) / points, 1e-6)
    samples = []
    for i in range(points + 1):
        t = t0 + i * step
        # running at t: started at or before t, minus finished at or before t (a <= t < b)
        samples.append((round(t - t0, 6), bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)))
    return samples


def growth(spans: Sequence[StepSpan], spawns: Sequence[Mapping[str, Any]]) -> list[tuple[float, int]]:
    """(seconds since the first start, steps in the run) at the start and after each spawn; [] without spawns."""
    starts = [s.started_at for s in spans if s.started_at is not None]
    if not spawns or not starts:
        return []
    t0 = min(starts)
    known = len(spans) - sum(int(row["added_count"]) for row in spawns)
    points = [(0.0, known)]
    for row in spawns:
        known += int(row["added_count"])
        points.append((round(max(0.0, row["at_us"] / 1e6 - t0), 6), known))
    return points


def stragglers(spans: Sequence[StepSpan], factor: float = STRAGGLER_FACTOR) -> list[dict[str, Any]]:
    """Succeeded steps that ran `factor` times the run's median (and STRAGGLER_MIN_MS more), slowest first."""
    done = [s for s in spans if s.outcome == "succeeded" and s.run_ms > 0]
    if len(done) < 3:
        return []
    median = statistics.median(s.run_ms for s in done)
    slow = [s for s in done if s.run_ms >= factor * median and s.run_ms - median >= STRAGGLER_MIN_MS]
    return [
        {"step_id": s.step_id, "agent_id": s.agent_id, "run_ms": s.run_ms, "x_median": s.run_ms / median if median else 0}
        for s in sorted(slow, key=lambda s: -s.run_ms)
    ]


def token_totals(tokens: Sequence[Mapping[str, Any]]) -> list[TokenTotal]:
    """TOKENS_SQL rows summed by phase: planning, steps, synthesis (those first, in that order), others."""
    sums: dict[str, list[float]] = {}
    for row in tokens:
        total = sums.setdefault(row["phase"], [0, 0, 0, 0, 0.0])
        for i, key in enumerate(("calls_count", "failed_count", "prompt_tokens", "completion_tokens", "cost_usd")):
            total[i] += row[key]
    order = {phase: i for i, phase in enumerate(PHASES)}
    return [
        TokenTotal(phase, int(t[0]), int(t[1]), int(t[2]), int(t[3]), float(t[4]))
        for phase, t in sorted(sums.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    ]


async def analyze_run(query: Query, run_id: str, bus: Bus | None = None) -> RunAnalysis:
    """Everything about one run, in a handful of queries; with a `bus`, also its answer and step outputs."""
    params = {"run": run_id}
    run_rows, step_rows, plan_rows, failures, tokens, inference, spawns = await asyncio.gather(
        query(RUN_SQL, params), query(STEPS_SQL, params), query(PLAN_SQL, params),
        query(FAILURES_SQL, params), query(TOKENS_SQL, params), query(INFERENCE_SQL, params),
        query(GROWTH_SQL, params),
    )  # fmt: skip
    if not run_rows and not step_rows:
        raise LookupError(f"run {run_id} is not in the event log")
    plan = {row["step_id"]: row["depends_on"] for row in plan_rows}
    spans = spans_from_rows(step_rows, plan)
    notes = []
    if not plan and not any(s.depends_on for s in spans):
        notes.append("no dependency information (plan or 'depends_on' attribute): the critical path is the last step only")
    path = observed_critical_path(spans)
    by_id = {s.step_id: s for s in spans}
    run = run_rows[0] if run_rows else {"run_id": run_id, "status": "unknown"}
    starts = [t for s in spans if (t := s.queued_at or s.started_at) is not None]
    ends = [s.finished_at for s in spans if s.finished_at is not None]
    makespan_ms = (max(ends) - min(starts)) * 1000 if starts and ends else float(run.get("wall_ms") or 0)
    path_ms = 0.0
    if path:
        first, last = by_id[path[0]], by_id[path[-1]]
        path_ms = ((last.finished_at or 0) - (first.queued_at or first.started_at or 0)) * 1000
    summary_tokens = None
    if run_rows and (run.get("prompt_tokens") or run.get("completion_tokens")):
        summary_tokens = (int(run["prompt_tokens"]), int(run["completion_tokens"]))
    analysis = RunAnalysis(
        run_id=run_id, run=run, steps=spans, makespan_ms=makespan_ms, critical_path=path,
        critical_path_ms=max(0.0, path_ms), lower_bound_ms=lower_bound_ms(spans), concurrency=concurrency(spans),
        stragglers=stragglers(spans), failures=failures, tokens=tokens, inference=inference[0] if inference else {},
        queued_ms_total=sum(s.queued_ms for s in spans), running_ms_total=sum(s.run_ms for s in spans), notes=notes,
        token_totals=token_totals(tokens), summary_tokens=summary_tokens, growth=growth(spans, spawns),
    )  # fmt: skip
    if bus is not None:
        tenant = str(run.get("tenant") or "*")
        (analysis.answer, missing), analysis.outputs = await asyncio.gather(
            read_outcome(bus, tenant, run_id), read_outputs(bus, tenant, run_id)
        )
        analysis.missing_agents = [m.model_dump() for m in missing]
        if analysis.answer is None and run.get("status") == "completed":
            notes.append("the run's 'completed' event is no longer on the RUNS stream: its answer cannot be shown")
        if spans and not analysis.outputs:
            notes.append(f"no step output is in the {OUTPUTS_BUCKET.name} bucket (deleted, or another deployment)")
    return analysis


# --------------------------------------------------------------------------- content (NATS, not the event log)


async def read_outcome(bus: Bus, tenant: str, run_id: str) -> tuple[str | None, tuple[MissingAgent, ...]]:
    """The final answer of a run (its RunCompleted on the RUNS stream; None when there is none) and the
    sub-agents it lacks (from the RunCompleted, else the RunFailed)."""
    for kind, event_type in (("completed", RunCompleted), ("failed", RunFailed)):
        try:
            msg = await bus.js.get_last_msg(RUNS.name, Subjects.run_event(tenant, run_id, kind))
        except NotFoundError:
            continue
        event = event_type.model_validate_json(msg.data or b"")
        return (event.answer if isinstance(event, RunCompleted) else None), event.missing_agents
    return None, ()


def cut_outputs(outputs: Mapping[str, str], max_chars: int, budget_chars: int) -> dict[str, str]:
    """Outputs each cut at `max_chars`, or shorter when they would exceed `budget_chars` together
    (thousands of long outputs must not make a report of hundreds of MB); a cut says how much is missing."""
    total = sum(min(len(text), max_chars) for text in outputs.values())
    limit = max_chars if total <= budget_chars else max(MIN_OUTPUT_CHARS, budget_chars // max(1, len(outputs)))
    return {
        key: text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"
        for key, text in outputs.items()
    }


async def read_outputs(bus: Bus, tenant: str, run_id: str) -> dict[str, str]:
    """Every step output of a run from the outputs bucket (large ones from the object store), cut to fit a
    report (`cut_outputs`). One ordered consumer streams the bucket's last values under '<tenant>.<run_id>.>'."""
    kv = await bus.kv(OUTPUTS_BUCKET)
    payloads = Payloads(bus)
    outputs: dict[str, str] = {}
    watcher = await kv.watch(Keys.of_run(tenant, run_id), ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:  # every current value has been delivered
                break
            try:
                value = await payloads.resolve(entry.value or b"")
            except PayloadMissing as exc:
                value = f"({exc})".encode()
            outputs[Keys.within_run(entry.key, tenant, run_id)] = value.decode(errors="replace")
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return cut_outputs(outputs, MAX_OUTPUT_CHARS, OUTPUTS_BUDGET_CHARS)


# --------------------------------------------------------------------------- across runs


async def cross_run_stats(query: Query, window_s: int = 24 * 3600) -> dict[str, Any]:
    """Runs per minute, success rate, steps/s, step latency quantiles, gateway TTFT and tokens/s."""
    params = {"window_s": window_s}
    runs, per_minute, latency, gateway = await asyncio.gather(
        query(STATS_SQL, params), query(RUNS_PER_MINUTE_SQL, params),
        query(STEP_LATENCY_SQL, params), query(GATEWAY_SQL, params),
    )  # fmt: skip
    r, lat, gw = runs[0], latency[0], gateway[0]
    finished = int(r["completed_count"]) + int(r["failed_count"]) + int(r["cancelled_count"])
    span_s = ((lat["last_us"] or 0) - (lat["first_us"] or 0)) / 1e6
    minutes = max(1, len(per_minute))
    return {
        "window_s": window_s,
        "runs_count": int(r["runs_count"]),
        "active_count": int(r["active_count"]),
        "runs_per_minute": round(int(r["runs_count"]) / minutes, 3),
        "success_rate": round(int(r["completed_count"]) / finished, 4) if finished else None,
        "steps_succeeded": int(lat["steps_count"]),
        "steps_per_s": round(int(lat["steps_count"]) / span_s, 2) if span_s > 0 else None,
        "retries_count": int(r["retries_count"]),
        "step_ms_p50": _q(lat["run_ms_q"], 0), "step_ms_p95": _q(lat["run_ms_q"], 1),
        "step_ms_p99": _q(lat["run_ms_q"], 2),
        "inference_calls": int(gw["calls_count"]), "inference_failed": int(gw["failed_count"]),
        "ttft_ms_p50": _q(gw["ttft_ms_q"], 0), "ttft_ms_p95": _q(gw["ttft_ms_q"], 1),
        "ttft_ms_p99": _q(gw["ttft_ms_q"], 2),
        "queue_ms_p50": _q(gw["queue_ms_q"], 0), "queue_ms_p99": _q(gw["queue_ms_q"], 2),
        "tokens_per_s_p50": _q(gw["tokens_per_s_q"], 0), "cost_usd": float(gw["cost_usd"] or 0),
        "runs_per_minute_series": [
            {"minute": str(m["minute"]), "runs": int(m["runs_count"]), "completed": int(m["completed_count"])}
            for m in per_minute
        ],
    }  # fmt: skip


def _q(values: Sequence[float] | None, i: int) -> float | None:
    """One quantile of a quantiles() array; None when there was no data (nan)."""
    if not values or i >= len(values) or values[i] != values[i]:
        return None
    return round(float(values[i]), 3)


# --------------------------------------------------------------------------- Grafana macros

_MACRO_CALL = re.compile(r"\$__(timeFilter_ms|timeFilter|timeInterval_ms|timeInterval|dateFilter)\(([^()]*)\)")
_CONDITIONAL_ALL = re.compile(r"\$__conditionalAll\((.*?),\s*\$\{?(\w+)\}?\)")


def expand_grafana_macros(
    sql: str, start: datetime, end: datetime, interval_s: int = 1, variables: Mapping[str, str] | None = None
) -> str:
    """SQL as the grafana-clickhouse-datasource plugin sends it: its macros and template variables expanded.

    Macros: $__timeFilter(col), $__timeFilter_ms(col), $__dateFilter(col), $__fromTime, $__toTime,
    $__fromTime_ms, $__toTime_ms, $__timeInterval(col), $__timeInterval_ms(col), $__interval_s,
    $__conditionalAll(cond, $var); variables as ${name}, $name (raw, as Grafana does: dashboards quote
    them, '${run_id}') and ${name:singlequote} (each comma-separated value quoted); "$__all" selects all.
    """
    variables = dict(variables or {})
    from_s, to_s = int(start.astimezone(UTC).timestamp()), int(end.astimezone(UTC).timestamp())
    from_ms, to_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    def conditional(match: re.Match[str]) -> str:
        value = variables.get(match.group(2), "")
        return "1=1" if value in ("", "$__all", "All") else match.group(1)

    sql = _CONDITIONAL_ALL.sub(conditional, sql)

    def call(match: re.Match[str]) -> str:
        name, col = match.group(1), match.group(2).strip()
        if name == "timeFilter":
            return f"{col} >= toDateTime({from_s}) AND {col} <= toDateTime({to_s})"
        if name == "timeFilter_ms":
            return f"{col} >= fromUnixTimestamp64Milli({from_ms}) AND {col} <= fromUnixTimestamp64Milli({to_ms})"
        if name == "dateFilter":
            return f"{col} >= toDate({from_s}) AND {col} <= toDate({to_s})"
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({col}), INTERVAL {max(1, interval_s)} second)"
        return f"toStartOfInterval(toDateTime64({col}, 3), INTERVAL {max(1, interval_s * 1000)} millisecond)"

    sql = _MACRO_CALL.sub(call, sql)
    for name, value in (
        ("fromTime_ms", f"fromUnixTimestamp64Milli({from_ms})"), ("toTime_ms", f"fromUnixTimestamp64Milli({to_ms})"),
        ("fromTime", f"toDateTime({from_s})"), ("toTime", f"toDateTime({to_s})"),
        ("interval_s", str(max(1, interval_s))),
    ):  # fmt: skip
        sql = re.sub(rf"\$__{name}\b", value, sql)
    for name, value in variables.items():

        def variable(match: re.Match[str], value: str = value) -> str:
            if match.group(1) in ("singlequote", "sqlstring"):
                return ",".join("'" + v.replace("'", "\\'") + "'" for v in value.split(","))
            return value

        sql = re.sub(rf"\$\{{{name}(?::(\w+))?\}}|\${name}\b", variable, sql)
    leftover = re.search(r"\$__\w+|\$\{\w+", sql)
    if leftover:
        raise ValueError(f"unexpanded macro or variable {leftover.group(0)!r} in: {sql[:200]}")
    return sql
