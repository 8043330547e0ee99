"""One row per run in the `runs` table, from the RUNS stream: 'planned' gives the goal, a terminal event the outcome.

Each write merges the event into the run's current row (read back with FINAL) and writes it with a
higher version, so a redelivered 'planned' never turns a finished run back into a running one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import nats.errors
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from nats.aio.msg import Msg

from services.recorder.settings import RecorderSettings
from swarm.bus import Bus, ConsumerSpec, Retry, consume_batches, fail
from swarm.contracts import (
    RECORDER_RUNS_CONSUMER,
    RUN_EVENT,
    RUNS,
    TERMINAL_RUN_EVENTS,
    RunAccepted,
    RunCancelled,
    RunCompleted,
    RunEventKind,
    RunExecuted,
    RunFailed,
    RunPlanned,
    RunRejected,
    RunStatus,
    RunSummary,
    Subjects,
)
from swarm.eventlog import RUNS_TABLE, EventLog
from swarm.payloads import PlanStore, PlanUnavailable

log = logging.getLogger(__name__)

RECORDED_RUN_EVENTS = (RunEventKind.PLANNED, *TERMINAL_RUN_EVENTS)
RUNS_BATCH = 256
_TERMINAL = {str(s) for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.REJECTED)}
_TIMES = ("submitted_at", "finished_at")

RecordedRunEvent = RunAccepted | RunPlanned | RunExecuted | RunCompleted | RunFailed | RunCancelled | RunRejected
# A run's status only moves forward: a redelivered 'planned' or 'executed' never takes a later status back.
_PROGRESS = {str(RunStatus.PLANNING): 0, str(RunStatus.RUNNING): 1, str(RunStatus.SYNTHESIZING): 2}


def run_events_consumer(durable: str, kinds: tuple[RunEventKind, ...], settings: RecorderSettings) -> ConsumerSpec:
    """A durable pull consumer on RUNS of the run events of `kinds` (every run's)."""
    return ConsumerSpec(
        stream=RUNS,
        durable=durable,
        filter_subjects=tuple(Subjects.run_kind_all(kind) for kind in kinds),
        ack_wait_s=settings.ack_wait_s,
    )


def runs_consumer(settings: RecorderSettings) -> ConsumerSpec:
    """The recorder's durable pull consumer on RUNS: 'planned' and the terminal events."""
    return run_events_consumer(RECORDER_RUNS_CONSUMER, RECORDED_RUN_EVENTS, settings)


def empty_run_row(run_id: str, tenant: str) -> dict[str, Any]:
    """A run row before any event is applied."""
    return {
        "run_id": run_id, "tenant": tenant, "status": str(RunStatus.PLANNING), "goal": "", "error": "",
        "agents_count": 0, "steps_total": 0, "steps_succeeded": 0, "steps_failed": 0, "steps_cancelled": 0,
        "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "submitted_at": None, "finished_at": None,
        "wall_ms": 0.0, "version": 0,
    }  # fmt: skip


def _apply_summary(row: dict[str, Any], summary: RunSummary) -> None:
    row.update(
        agents_count=summary.agents_count,
        steps_total=summary.steps_total,
        steps_succeeded=summary.steps_succeeded,
        steps_failed=summary.steps_failed,
        steps_cancelled=summary.steps_cancelled,
        retries=summary.retries_count,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        wall_ms=summary.wall_ms,
    )


def _advance(row: dict[str, Any], status: RunStatus) -> None:
    """Move the row to `status` unless it is there or past it already (a finished run keeps its outcome)."""
    if row["status"] not in _TERMINAL and _PROGRESS[row["status"]] < _PROGRESS[str(status)]:
        row["status"] = str(status)


def apply_run_event(row: dict[str, Any], event: RecordedRunEvent) -> dict[str, Any]:
    """The run's row after `event` (a new dict): the one derivation of a run's status, for the `runs`
    table and the run index alike. A finished run keeps its outcome."""
    row = dict(row)
    if isinstance(event, RunAccepted):
        row.update(goal=row["goal"] or event.goal, submitted_at=row["submitted_at"] or event.submitted_at)
        _advance(row, RunStatus.PLANNING)
        return row
    if isinstance(event, RunPlanned):
        agents_count = len(event.plan.agents) if event.plan else event.agents_count
        row.update(goal=event.goal, submitted_at=event.submitted_at, agents_count=agents_count)
        row["steps_total"] = row["steps_total"] or (len(event.plan.steps) if event.plan else event.steps_count)
        _advance(row, RunStatus.RUNNING)
        return row
    if isinstance(event, RunExecuted):
        row.update(goal=row["goal"] or event.goal, submitted_at=row["submitted_at"] or event.submitted_at)
        row["agents_count"] = row["agents_count"] or event.summary.agents_count
        row["steps_total"] = row["steps_total"] or event.summary.steps_total
        _advance(row, RunStatus.SYNTHESIZING)
        return row
    row.update(status=event.kind, finished_at=event.at)
    if isinstance(event, RunCompleted):
        _apply_summary(row, event.summary)
    elif isinstance(event, RunFailed):
        row["error"] = event.error
        if event.summary is not None:
            _apply_summary(row, event.summary)
    elif isinstance(event, RunCancelled):
        row["error"] = event.reason
    else:
        row["error"] = event.error
    if not row["wall_ms"] and row["submitted_at"] is not None:
        row["wall_ms"] = max(0.0, (event.at - row["submitted_at"]).total_seconds() * 1000)
    return row


class RunRecorder:
    """The RUNS consumer loop."""

    def __init__(self, bus: Bus, eventlog: EventLog, settings: RecorderSettings) -> None:
        self.bus = bus
        self.eventlog = eventlog
        self.settings = settings
        self.recorded_count = 0
        self._failures = 0
        self.plans: PlanStore | None = None  # a plan by reference: plan_steps need its DAG

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch run events and upsert run rows until `stop`."""
        psub = await self.bus.pull_subscription(runs_consumer(self.settings))
        await consume_batches(psub, self._on_msgs, stop, batch=RUNS_BATCH, fetch_timeout_s=self.settings.fetch_timeout_s)

    async def _on_msgs(self, msgs: list[Msg]) -> None:
        events: list[tuple[Msg, RecordedRunEvent]] = []
        for msg in msgs:
            try:
                event: RecordedRunEvent = RUN_EVENT.validate_json(msg.data)  # type: ignore[assignment]  # the filter admits only these kinds
                if isinstance(event, RunPlanned):
                    event = await self._resolved(event)
                events.append((msg, event))
            except Exception as exc:  # one event's failure is that event's, through the one policy
                await fail(msg, exc)
        try:
            await asyncio.to_thread(self.write, [event for _, event in events])
        except (ClickHouseError, OSError) as exc:
            self._failures += 1
            delay_s = min(self.settings.retry_max_s, 0.5 * 2**self._failures)
            for msg, _ in events:  # the event log is away: wait it out (never given up)
                await fail(msg, Retry(f"writing run events failed: {exc}", delay_s=delay_s))
            return
        self._failures = 0
        for msg, _ in events:
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
        self.recorded_count += len(events)

    async def _resolved(self, planned: RunPlanned) -> RunPlanned:
        """The planned run with its plan inline; a plan that is gone leaves the run recorded without its DAG."""
        if self.plans is None:
            self.plans = PlanStore(self.bus.js)
        try:
            return await self.plans.resolved(planned)
        except PlanUnavailable as exc:
            log.warning("run %s: plan_steps not recorded: %s", planned.run_id, exc)
            return planned

    def write(self, events: list[RecordedRunEvent]) -> int:
        """Merge the events into their runs' current rows and write those rows (blocking)."""
        if not events:
            return 0
        run_ids = sorted({e.run_id for e in events})
        rows = {row["run_id"]: row for row in self._current_rows(run_ids)}
        version = time.time_ns()
        for event in events:  # in stream order
            row = rows.get(event.run_id) or empty_run_row(event.run_id, event.tenant)
            rows[event.run_id] = apply_run_event(row, event)
        for row in rows.values():
            row["version"] = version
        edges = [
            (e.run_id, step.id, step.agent_id, step.depends_on)
            for e in events
            if isinstance(e, RunPlanned) and e.plan is not None
            for step in e.plan.steps
        ]
        if edges:
            self.eventlog.insert_plan_steps(edges)
        return self.eventlog.insert_runs(list(rows.values()))

    def _current_rows(self, run_ids: list[str]) -> list[dict[str, Any]]:
        # Times travel as epoch microseconds: naive datetimes from the driver would depend on the host's zone.
        rows = self.eventlog.query(
            f"SELECT * EXCEPT (submitted_at, finished_at), toUnixTimestamp64Micro(submitted_at) AS submitted_at, "
            f"toUnixTimestamp64Micro(finished_at) AS finished_at FROM {RUNS_TABLE} FINAL "
            "WHERE run_id IN {ids:Array(String)}",
            {"ids": run_ids},
        )
        for row in rows:
            for name in _TIMES:
                if row[name] is not None:
                    row[name] = datetime.fromtimestamp(row[name] / 1e6, UTC)
        return rows
