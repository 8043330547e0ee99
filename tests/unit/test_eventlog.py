"""The event log on the real in-process ClickHouse engine (chdb) in a temporary directory.

chdb runs one engine per process and on one directory at a time: a second directory can be opened
only once every client of the first is closed. So every test closes its EventLog (the fixture
does), and the locked-directory case runs its second opener in a subprocess.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.recorder.settings import MIGRATIONS_DIR
from swarm.contracts import UINT16_MAX, UINT32_MAX, InferenceEvent, StepEvent, StepEventKind, step_event_id
from swarm.eventlog import (
    EventLog,
    EventLogError,
    EventLogLocked,
    _dedup_token,
    datetime64_ticks,
    find_migrations,
    open_client,
)
from swarm.settings import ClickHouseSettings


@pytest.fixture
def ch_settings(tmp_path: Path) -> ClickHouseSettings:
    return ClickHouseSettings(mode="chdb", path=tmp_path / "clickhouse", database="swarm_test")


@pytest.fixture
def eventlog(ch_settings: ClickHouseSettings) -> Iterator[EventLog]:
    with EventLog.open(ch_settings, MIGRATIONS_DIR) as opened:
        yield opened


def step_event(run_id: str, step_id: str, kind: StepEventKind, attempt: int = 1, **fields: object) -> StepEvent:
    return StepEvent(
        event_id=step_event_id(run_id, step_id, attempt, kind),
        run_id=run_id,
        tenant="acme",
        step_id=step_id,
        agent_id="a1",
        attempt=attempt,
        kind=kind,
        **fields,  # type: ignore[arg-type]
    )


def test_migrations_apply_once(ch_settings: ClickHouseSettings) -> None:
    with EventLog(ch_settings) as eventlog:
        assert eventlog.migrate(MIGRATIONS_DIR) == [
            "0001_event_log.up.sql", "0002_analytics.up.sql", "0003_spawned_by.up.sql"
        ]
        assert eventlog.migrate(MIGRATIONS_DIR) == []
        tables = {row["name"] for row in eventlog.query("SHOW TABLES")}
        assert {"step_events", "inference_calls", "runs", "plan_steps", "step_attempts", "step_spans"} <= tables
    with EventLog(ch_settings) as reopened:  # a restart applies nothing either
        assert reopened.migrate(MIGRATIONS_DIR) == []
        assert reopened.query("SELECT version, name FROM schema_migrations FINAL ORDER BY version") == [
            {"version": 1, "name": "event_log"}, {"version": 2, "name": "analytics"},
            {"version": 3, "name": "spawned_by"},
        ]


def test_migration_files_are_numbered_and_split(tmp_path: Path) -> None:
    assert [m.version for m in find_migrations(MIGRATIONS_DIR)] == list(range(1, len(find_migrations(MIGRATIONS_DIR)) + 1))
    statements = find_migrations(MIGRATIONS_DIR)[0].statements()
    assert [s.split("(")[0].split()[-1] for s in statements] == ["step_events", "inference_calls", "runs"]
    (tmp_path / "0001_a.up.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.up.sql").write_text("SELECT 2;")
    with pytest.raises(EventLogError, match="two migrations numbered 1"):
        find_migrations(tmp_path)
    (tmp_path / "0001_b.up.sql").rename(tmp_path / "2_b.up.sql")
    with pytest.raises(EventLogError, match="NNNN_name"):
        find_migrations(tmp_path)


def test_step_events_insert_and_dedupe(eventlog: EventLog) -> None:
    at = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    first = [
        step_event("r1", f"s{i}", StepEventKind.SUCCEEDED, at=at + timedelta(seconds=i), duration_ms=1.5,
                   prompt_tokens=10, completion_tokens=5, worker_id="w1", attributes={"pool": "default"})
        for i in range(100)
    ]  # fmt: skip
    assert eventlog.insert_step_events(first) == 100
    # A redelivery: the same block again (dropped by its token) and a different block holding one duplicate.
    assert eventlog.insert_step_events(first) == 100
    eventlog.insert_step_events([first[0], step_event("r1", "s0", StepEventKind.FAILED, error="boom" * 100)])
    counts = eventlog.query(
        "SELECT count() AS n, uniqExact(event_id) AS unique_n, sum(prompt_tokens) AS tokens "
        "FROM step_events FINAL WHERE run_id = {run:String}",
        {"run": "r1"},
    )
    assert counts == [{"n": 101, "unique_n": 101, "tokens": 1000}]
    row = eventlog.query("SELECT * FROM step_events FINAL WHERE event_id = {id:String}", {"id": first[3].event_id})[0]
    assert row["kind"] == "succeeded"
    assert row["tenant"] == "acme"
    assert row["attributes"] == {"pool": "default"}
    assert row["at"].replace(tzinfo=UTC) == at + timedelta(seconds=3)


def test_datetime64_ticks_are_exact_microseconds_in_utc() -> None:
    at = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert datetime64_ticks(at) == 1740830400_123456
    assert datetime64_ticks(at.astimezone(timezone(timedelta(hours=-5)))) == 1740830400_123456
    assert datetime64_ticks(at.replace(tzinfo=None)) == 1740830400_123456  # naive: the column's zone, UTC
    assert datetime64_ticks(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1


def test_dedup_token_is_the_same_for_the_same_ids_in_the_same_order() -> None:
    ids = ["r1.s1.1.queued", "r1.s1.1.started", "r1.s1.1.succeeded"]
    # The token of earlier versions (one digest update per id): a batch inserted before an upgrade and
    # redelivered after it still carries the same token, so the engine drops the repeat.
    digest = hashlib.sha256(b"step_events")
    for event_id in ids:
        digest.update(b"\0" + event_id.encode())
    assert _dedup_token("step_events", ids) == digest.hexdigest()
    assert _dedup_token("step_events", ids[::-1]) != digest.hexdigest()
    assert _dedup_token("inference_calls", ids) != digest.hexdigest()


def test_inference_calls_insert(eventlog: EventLog) -> None:
    calls = [
        InferenceEvent(event_id=f"q{i}", run_id="r1", step_id="s1", caller="worker", model="m", backend="sim",
                       ok=i % 2 == 0, prompt_tokens=3, completion_tokens=4, duration_ms=2.0)
        for i in range(10)
    ]  # fmt: skip
    assert eventlog.insert_inference_events(calls) == 10
    rows = eventlog.query("SELECT ok, count() AS n FROM inference_calls FINAL GROUP BY ok ORDER BY ok")
    assert rows == [{"ok": False, "n": 5}, {"ok": True, "n": 5}]


def test_values_wider_than_their_columns_are_refused_not_clamped() -> None:
    with pytest.raises(ValidationError, match="attempt"):
        step_event("r2", "s1", StepEventKind.STARTED, attempt=70_000)
    with pytest.raises(ValidationError, match="prompt_tokens"):
        step_event("r2", "s1", StepEventKind.STARTED, prompt_tokens=2**40)


def test_the_widest_values_are_stored_exactly(eventlog: EventLog) -> None:
    event = step_event("r2", "s1", StepEventKind.STARTED, attempt=UINT16_MAX, prompt_tokens=UINT32_MAX)
    eventlog.insert_step_events([event])
    assert eventlog.query("SELECT attempt, prompt_tokens FROM step_events") == [
        {"attempt": UINT16_MAX, "prompt_tokens": UINT32_MAX}
    ]


def test_a_second_process_gets_a_clear_error(eventlog: EventLog, ch_settings: ClickHouseSettings) -> None:
    opener = (
        "import sys\n"
        "from pathlib import Path\n"
        "from swarm.eventlog import EventLogLocked, open_client\n"
        "from swarm.settings import ClickHouseSettings\n"
        "try:\n"
        "    open_client(ClickHouseSettings(mode='chdb', path=Path(sys.argv[1])))\n"
        "except EventLogLocked as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", opener, str(ch_settings.path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert str(ch_settings.path.resolve()) in done.stdout
    assert "in use by pid" in done.stdout


def test_same_process_reopens_same_directory(eventlog: EventLog, ch_settings: ClickHouseSettings) -> None:
    client = open_client(ch_settings)  # same directory in the same process: shares the engine
    try:
        assert client.command("SELECT 1") == 1
    finally:
        client.close()
    assert issubclass(EventLogLocked, EventLogError)


def test_another_directory_in_the_same_process_is_refused(eventlog: EventLog, tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="one directory per process"):
        open_client(ClickHouseSettings(mode="chdb", path=tmp_path / "elsewhere"))
