"""The recorder's pure parts: which SQL it answers, and how run events fold into one `runs` row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.recorder.querying import answer, is_read_only
from services.recorder.runs import RunRecorder, apply_run_event, empty_run_row
from services.recorder.settings import MIGRATIONS_DIR, RecorderSettings
from swarm.contracts import (
    AgentSpec,
    Plan,
    PlanSource,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunSummary,
    StepSpec,
)
from swarm.eventlog import EventLog
from swarm.settings import ClickHouseSettings

SUBMITTED = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1", "  select 1", "WITH x AS (SELECT 1) SELECT * FROM x", "DESCRIBE step_events", "SHOW TABLES",
     "-- a comment\nSELECT 1", "/* c */ (SELECT 1)", "EXPLAIN SELECT 1"],
)  # fmt: skip
def test_reads_are_answered(sql: str) -> None:
    assert is_read_only(sql)


@pytest.mark.parametrize(
    "sql", ["INSERT INTO runs VALUES (1)", "DROP TABLE runs", "ALTER TABLE runs DELETE WHERE 1", "", "SELECTX 1",
            "-- SELECT\nDROP TABLE runs", "OPTIMIZE TABLE runs FINAL"],
)  # fmt: skip
def test_writes_are_refused(sql: str) -> None:
    assert not is_read_only(sql)


def planned(run_id: str = "r1") -> RunPlanned:
    plan = Plan(
        agents=(AgentSpec(id="a1", role="r"), AgentSpec(id="a2", role="r")),
        steps=(StepSpec(id="s1", agent_id="a1", instruction="x"), StepSpec(id="s2", agent_id="a2", instruction="y")),
    )
    return RunPlanned(run_id=run_id, tenant="acme", goal="find things", plan=plan, source=PlanSource.EXPLICIT,
                      submitted_at=SUBMITTED, at=SUBMITTED + timedelta(seconds=1))  # fmt: skip


def completed(run_id: str = "r1") -> RunCompleted:
    summary = RunSummary(agents_count=2, steps_total=2, steps_succeeded=2, steps_failed=0, retries_count=1,
                         prompt_tokens=100, completion_tokens=50, wall_ms=5000.0)  # fmt: skip
    return RunCompleted(run_id=run_id, tenant="acme", answer="42", summary=summary, at=SUBMITTED + timedelta(seconds=5))


def test_a_redelivered_planned_keeps_the_outcome() -> None:
    row = empty_run_row("r1", "acme")
    row = apply_run_event(row, planned())
    assert (row["status"], row["goal"], row["steps_total"]) == ("running", "find things", 2)
    row = apply_run_event(row, completed())
    row = apply_run_event(row, planned())
    assert (row["status"], row["goal"], row["retries"], row["wall_ms"]) == ("completed", "find things", 1, 5000.0)


def test_failed_without_summary_gets_wall_time() -> None:
    row = apply_run_event(apply_run_event(empty_run_row("r1", "acme"), planned()),
                          RunFailed(run_id="r1", tenant="acme", error="boom", at=SUBMITTED + timedelta(seconds=2)))  # fmt: skip
    assert (row["status"], row["error"], row["wall_ms"]) == ("failed", "boom", 2000.0)


@pytest.fixture
def eventlog(tmp_path: Path) -> Iterator[EventLog]:
    settings = ClickHouseSettings(mode="chdb", path=tmp_path / "clickhouse", database="swarm_test")
    with EventLog.open(settings, MIGRATIONS_DIR) as opened:
        yield opened


def test_runs_rows_merge_across_writes(eventlog: EventLog) -> None:
    recorder = RunRecorder(bus=None, eventlog=eventlog, settings=RecorderSettings())  # type: ignore[arg-type]
    recorder.write([planned("r1"), planned("r2")])
    recorder.write([completed("r1")])
    recorder.write([planned("r1")])  # redelivered
    rows = eventlog.query("SELECT run_id, status, goal, steps_succeeded, submitted_at FROM runs FINAL ORDER BY run_id")
    assert [(r["run_id"], r["status"], r["goal"], r["steps_succeeded"]) for r in rows] == [
        ("r1", "completed", "find things", 2),
        ("r2", "running", "find things", 0),
    ]
    assert rows[0]["submitted_at"].replace(tzinfo=UTC) == SUBMITTED


async def test_query_answers(eventlog: EventLog) -> None:
    assert await answer(eventlog, b'{"sql": "SELECT {n:UInt8} + 1 AS x", "parameters": {"n": 1}}', 10_000) == [
        b'{"rows": [{"x": 2}]}'
    ]
    assert b"read-only" in (await answer(eventlog, b'{"sql": "DROP TABLE runs"}', 10_000))[0]
    assert b"bad request" in (await answer(eventlog, b"not json", 10_000))[0]
    assert b"UNKNOWN_TABLE" in (await answer(eventlog, b'{"sql": "SELECT * FROM nope"}', 10_000))[0]
    assert b"add a LIMIT" in (await answer(eventlog, b'{"sql": "SELECT number FROM numbers(10000)"}', 1000))[0]


async def test_a_large_result_comes_in_parts_when_asked(eventlog: EventLog) -> None:
    request = b'{"sql": "SELECT number AS n FROM numbers(10000)", "parts": true}'
    bodies = await answer(eventlog, request, 1000)
    assert len(bodies) > 10 and all(len(body) <= 1000 for body in bodies)
    parts = [json.loads(body) for body in bodies]
    assert [p["part"] for p in parts] == list(range(len(parts)))
    assert [p["more"] for p in parts] == [True] * (len(parts) - 1) + [False]
    assert [row["n"] for p in parts for row in p["rows"]] == list(range(10000))
    empty = await answer(eventlog, b'{"sql": "SELECT 1 AS n WHERE 0", "parts": true}', 1000)
    assert [json.loads(body) for body in empty] == [{"rows": [], "part": 0, "more": False}]
    too_much = await answer(eventlog, request, 1000, max_result_bytes=5000)
    assert len(too_much) == 1 and b"over the 5000 bytes" in too_much[0]
    wide = await answer(eventlog, b'{"sql": "SELECT repeat(\'x\', 2000) AS s", "parts": true}', 1000)
    assert len(wide) == 1 and b"row 0 is" in wide[0]
