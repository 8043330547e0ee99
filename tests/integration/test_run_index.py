"""The run index: derived from RUNS by its one writer (the recorder), listed newest first by `swarm runs`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from services.recorder.runindex import RunIndexer
from swarm.bus import Bus
from swarm.client import SwarmClient, index_changes, recent_runs
from swarm.contracts import (
    RECORD_GOAL_MAX_CHARS,
    RUN_INDEX_BUCKET,
    AgentSpec,
    Plan,
    PlanSource,
    RunAccepted,
    RunCompleted,
    RunExecuted,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStatus,
    RunSummary,
    StepSpec,
    Subjects,
)
from tests.integration.test_planner_service import eventually, run_record

pytestmark = pytest.mark.integration

T = TypeVar("T")
NOW = datetime.now(UTC)
PLAN = Plan(agents=(AgentSpec(id="a", role="r"),), steps=(StepSpec(id="s", agent_id="a", instruction="i"),))


def planned(run_id: str, goal: str = "Explain tides", submitted_at: datetime = NOW) -> RunPlanned:
    return RunPlanned(
        run_id=run_id, tenant="acme", goal=goal, plan=PLAN, source=PlanSource.EXPLICIT, submitted_at=submitted_at
    )


def summary() -> RunSummary:
    return RunSummary(
        steps_total=1, steps_succeeded=1, steps_failed=0, retries_count=0, agents_count=1, prompt_tokens=0,
        completion_tokens=0, wall_ms=1.0,
    )  # fmt: skip


async def publish(bus: Bus, *events: RunAccepted | RunPlanned | RunExecuted | RunCompleted | RunRejected) -> None:
    for event in events:
        await bus.publish(Subjects.run_event(event.tenant, event.run_id, event.kind), event)


async def test_a_runs_status_follows_its_events_and_never_goes_back(bus: Bus, run_index: RunIndexer) -> None:
    accepted = RunAccepted(run_id="r1", tenant="acme", goal="g" * RECORD_GOAL_MAX_CHARS, submitted_at=NOW)
    await publish(bus, accepted)  # the planner has the task: the run shows as planning until its plan is out
    assert (await run_record(bus, "r1", RunStatus.PLANNING)).submitted_at == NOW
    first = planned("r1", goal="g" * 500)
    await publish(bus, first)
    record = await run_record(bus, "r1", RunStatus.RUNNING)
    assert (record.steps_total, record.agents_count, record.submitted_at) == (1, 1, NOW)
    assert len(record.goal) == RECORD_GOAL_MAX_CHARS and record.goal.endswith("...")
    executed = RunExecuted(
        run_id="r1", tenant="acme", goal="g", sink_step_ids=("s",), summary=summary(), submitted_at=NOW
    )
    await publish(bus, executed)
    await run_record(bus, "r1", RunStatus.SYNTHESIZING)
    await publish(bus, RunCompleted(run_id="r1", tenant="acme", answer="42", summary=summary()))
    await run_record(bus, "r1", RunStatus.COMPLETED)
    # Redelivered or late events of earlier phases do not take a finished run back.
    await publish(bus, accepted, first, executed)
    await publish(bus, RunRejected(run_id="r2", tenant="acme", error="no goal"))
    rejected = await run_record(bus, "r2", RunStatus.REJECTED)
    assert rejected.error == "no goal"
    await eventually(lambda: _value(run_index.indexed_count == 8 or None))
    assert (await run_record(bus, "r1", RunStatus.COMPLETED)).goal.startswith("ggg")


async def _value(value: T) -> T:
    return value


async def test_runs_are_listed_newest_first_reading_only_recent_changes(bus: Bus) -> None:
    index = await bus.kv(RUN_INDEX_BUCKET)

    async def put(run_id: str, minutes_ago: float) -> None:
        record = RunRecord(
            run_id=run_id, tenant="acme", status=RunStatus.RUNNING, submitted_at=NOW - timedelta(minutes=minutes_ago)
        )
        await index.put(run_id, record.model_dump_json().encode())

    # Written (and so stored) in one order, submitted in another, and neither is the run-id order.
    for run_id, minutes_ago in (("m-old", 50.0), ("d-older", 55.0), ("z-oldest", 59.0)):
        await put(run_id, minutes_ago)
    await asyncio.sleep(0.05)
    boundary = datetime.now(UTC)
    await asyncio.sleep(0.05)
    for run_id, minutes_ago in (("c-new", 2), ("a-newest", 1), ("b-newer", 1.5)):
        await put(run_id, minutes_ago)
    assert [r.run_id for r in await SwarmClient(bus).runs(limit=10)] == [
        "a-newest", "b-newer", "c-new", "m-old", "d-older", "z-oldest"
    ]  # fmt: skip
    assert [r.run_id for r in await recent_runs(bus, 2)] == ["a-newest", "b-newer"]
    # A look-back reads only the records changed inside it, not every key.
    found: dict[str, tuple[int, RunRecord]] = {}
    await index_changes(bus, RUN_INDEX_BUCKET.stream, boundary, 0, found)
    assert sorted(found) == ["a-newest", "b-newer", "c-new"]
    # Looked at from four hours on, the first hour's look-back holds nothing: it widens to find them.
    later = await recent_runs(bus, 4, now=datetime.now(UTC) + timedelta(hours=3))
    assert [r.run_id for r in later] == ["a-newest", "b-newer", "c-new", "m-old"]
