"""The recorder in process against a real nats-server and the real chdb engine in a temporary directory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy

from services.recorder.service import run_recorder
from services.recorder.settings import RecorderSettings
from swarm.bus import Bus
from swarm.contracts import (
    EVENTS,
    RECORDER_CONSUMER,
    AgentSpec,
    InferenceEvent,
    InferenceEventBatch,
    Plan,
    PlanSource,
    RunCompleted,
    RunPlanned,
    RunSummary,
    StepEvent,
    StepEventBatch,
    StepEventKind,
    StepSpec,
    Subjects,
    step_event_id,
)
from swarm.eventlog import EventLog
from swarm.ops.queries import RecorderNotRunning, RecorderQueryError, query_via_recorder
from swarm.settings import ClickHouseSettings, NatsSettings

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running_recorder(bus: Bus, settings: RecorderSettings) -> AsyncIterator[asyncio.Event]:
    """Run the recorder as a task until the block ends; yields its stop event."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_recorder(settings, stop))
    try:
        await eventually(lambda: health(bus), timeout_s=30)
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def recorder_settings(nats_settings: NatsSettings, tmp_path: Path) -> RecorderSettings:
    return RecorderSettings(
        nats=nats_settings,
        clickhouse=ClickHouseSettings(mode="chdb", path=tmp_path / "clickhouse", database="swarm_test"),
        batch_max_ms=50,
        fetch_timeout_s=0.2,
        retry_max_s=1.0,
    )


@pytest.fixture
async def recorder(bus: Bus, recorder_settings: RecorderSettings) -> AsyncIterator[asyncio.Event]:
    async with running_recorder(bus, recorder_settings) as stop:
        yield stop


async def health(bus: Bus) -> dict[str, Any]:
    reply = await bus.nc.request(Subjects.health("recorder"), b"", timeout=1)
    details: dict[str, Any] = json.loads(reply.data)
    return details


async def eventually(probe: Callable[[], Awaitable[Any]], timeout_s: float = 15.0) -> Any:
    """The first truthy result of `probe`, polled; fails the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            result = await probe()
            if result:
                return result
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, RecorderNotRunning):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout_s}s: {probe}")
        await asyncio.sleep(0.05)


def step_event(run_id: str, i: int, kind: StepEventKind = StepEventKind.SUCCEEDED) -> StepEvent:
    return StepEvent(event_id=step_event_id(run_id, f"s{i}", 1, kind), run_id=run_id, tenant="acme",
                     step_id=f"s{i}", agent_id="a1", kind=kind, prompt_tokens=2, completion_tokens=3)  # fmt: skip


async def count_step_events(bus: Bus, run_id: str) -> dict[str, int]:
    rows = await query_via_recorder(
        bus.nc,
        "SELECT count() AS n, uniqExact(event_id) AS unique_n FROM step_events FINAL WHERE run_id = {run:String}",
        {"run": run_id},
    )
    return rows[0]


async def test_events_are_recorded_once_and_malformed_ones_do_not_block(bus: Bus, recorder: asyncio.Event) -> None:
    events = [step_event("r1", i) for i in range(50)]
    for event in events:
        await bus.publish_nowait(Subjects.step_event("acme", "r1"), event)
    await bus.publish_nowait(Subjects.step_event("acme", "r1"), events[7])  # a duplicate: a retried publish
    await bus.js.publish(Subjects.step_event("acme", "r1"), b"{not json")
    await bus.js.publish(Subjects.inference_event(), b'{"v": 1}')
    call = InferenceEvent(event_id="q1", run_id="r1", model="m", backend="sim", ok=True, prompt_tokens=5)
    await bus.publish_nowait(Subjects.inference_event(), call)
    batched = tuple(call.model_copy(update={"event_id": f"q{i}", "prompt_tokens": i}) for i in (2, 3))
    await bus.publish_nowait(Subjects.inference_event_batch(), InferenceEventBatch(events=batched))
    await bus.publish_nowait(Subjects.step_event("acme", "r1"), step_event("r1", 50))  # after the malformed ones
    await bus.flush_publishes()

    assert await eventually(lambda: _has(count_step_events(bus, "r1"), n=51)) == {"n": 51, "unique_n": 51}
    async def all_calls() -> list[dict[str, object]] | None:
        sql = "SELECT event_id, prompt_tokens FROM inference_calls FINAL ORDER BY event_id"
        rows = await query_via_recorder(bus.nc, sql)
        return rows if len(rows) == 3 else None

    calls = await eventually(all_calls)
    assert calls == [{"event_id": f"q{i}", "prompt_tokens": i if i > 1 else 5} for i in (1, 2, 3)]

    async def settled() -> bool:
        info = await bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(settled)
    details = await health(bus)
    assert details["events_rejected"] == 2
    assert details["events_recorded"] == 55  # the duplicate was stored and collapsed, not dropped


async def _has(rows: Awaitable[dict[str, int]], n: int) -> dict[str, int] | None:
    found = await rows
    return found if found["n"] == n else None


async def test_terminal_run_events_fill_the_runs_table(bus: Bus, recorder: asyncio.Event) -> None:
    submitted = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    plan = Plan(agents=(AgentSpec(id="a1", role="r"),), steps=(StepSpec(id="s1", agent_id="a1", instruction="x"),))
    summary = RunSummary(agents_count=1, steps_total=1, steps_succeeded=1, steps_failed=0, retries_count=0,
                         prompt_tokens=7, completion_tokens=8, wall_ms=1500.0)  # fmt: skip
    await bus.publish(Subjects.run_event("acme", "r9", "planned"), RunPlanned(
        run_id="r9", tenant="acme", goal="the goal", plan=plan, source=PlanSource.EXPLICIT, submitted_at=submitted))
    await bus.publish(Subjects.run_event("acme", "r9", "completed"), RunCompleted(
        run_id="r9", tenant="acme", answer="done", summary=summary, at=submitted + timedelta(seconds=1.5)))  # fmt: skip

    async def finished() -> list[dict[str, Any]]:
        return await query_via_recorder(
            bus.nc, "SELECT run_id, status, goal, prompt_tokens, wall_ms FROM runs FINAL WHERE status = 'completed'"
        )

    rows = await eventually(finished)
    assert rows == [{"run_id": "r9", "status": "completed", "goal": "the goal", "prompt_tokens": 7, "wall_ms": 1500.0}]


async def test_query_errors_come_back_clearly(bus: Bus, recorder: asyncio.Event) -> None:
    with pytest.raises(RecorderQueryError, match="read-only"):
        await query_via_recorder(bus.nc, "DROP TABLE step_events")
    with pytest.raises(RecorderQueryError, match="UNKNOWN_TABLE"):
        await query_via_recorder(bus.nc, "SELECT * FROM no_such_table")
    assert await query_via_recorder(bus.nc, "SELECT {x:String} AS x", {"x": "y"}) == [{"x": "y"}]


async def test_no_recorder_is_a_clear_error(bus: Bus) -> None:
    with pytest.raises(RecorderNotRunning, match="swarm up"):
        await query_via_recorder(bus.nc, "SELECT 1", timeout_s=2)


async def test_events_wait_in_jetstream_while_the_table_is_away(
    bus: Bus, recorder: asyncio.Event, recorder_settings: RecorderSettings
) -> None:
    # Same directory, same process: this EventLog shares the recorder's engine.
    with EventLog(recorder_settings.clickhouse) as eventlog:
        eventlog.query("DETACH TABLE step_events")
        try:
            for i in range(20):
                await bus.publish_nowait(Subjects.step_event("acme", "r2"), step_event("r2", i))
            await bus.flush_publishes()
            await eventually(lambda: _failed_inserts(bus))
            info = await bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER)
            assert info.num_pending + info.num_ack_pending == 20
        finally:
            eventlog.query("ATTACH TABLE step_events")
    assert await eventually(lambda: _has(count_step_events(bus, "r2"), n=20), timeout_s=30)


async def _failed_inserts(bus: Bus) -> bool:
    return bool((await health(bus))["failed_inserts"])


async def test_shutdown_inserts_the_pending_batch(bus: Bus, recorder_settings: RecorderSettings) -> None:
    settings = recorder_settings.model_copy(update={"batch_max_ms": 600_000.0, "batch_max_events": 10_000})
    async with running_recorder(bus, settings):
        for i in range(30):
            await bus.publish_nowait(Subjects.step_event("acme", "r3"), step_event("r3", i))
        await bus.flush_publishes()
        await eventually(lambda: _pending(bus, 30))
    with EventLog(settings.clickhouse) as eventlog:
        assert eventlog.query("SELECT count() AS n FROM step_events FINAL") == [{"n": 30}]
    info = await bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER)
    assert info.num_ack_pending == 0


async def test_a_steady_stream_is_stored_within_batch_max_ms(bus: Bus, recorder_settings: RecorderSettings) -> None:
    """The recorder reads a busy stream in bursts (it lingers between reads), and still inserts an event no
    later than batch_max_ms after it was published (plus the insert): a burst's age is its oldest event's."""
    settings = recorder_settings.model_copy(update={"batch_max_ms": 400.0, "fetch_timeout_s": 1.0})
    published: list[float] = []
    recorded_at: list[float] = []
    loop = asyncio.get_running_loop()
    async with running_recorder(bus, settings):
        base = (await health(bus))["events_recorded"]

        async def watch() -> None:
            while True:
                recorded = (await health(bus))["events_recorded"] - base
                recorded_at.extend([loop.time()] * (recorded - len(recorded_at)))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        for i in range(120):  # one event every 25 ms for 3 s
            await bus.publish(Subjects.step_event("acme", "r-steady"), step_event("r-steady", i))
            published.append(loop.time())
            await asyncio.sleep(0.025)
        await eventually(lambda: asyncio.sleep(0, len(recorded_at) >= 120))
        watcher.cancel()
    waits_ms = [(stored - sent) * 1000 for sent, stored in zip(published, recorded_at, strict=False)]
    assert len(waits_ms) == 120
    assert max(waits_ms) < 400 + 300, f"an event waited {max(waits_ms):.0f} ms to be stored"


async def _pending(bus: Bus, n: int) -> bool:
    return bool((await health(bus))["events_pending"] == n)


async def test_clickhouse_away_mid_run_every_event_arrives_exactly_once(
    bus: Bus, recorder: asyncio.Event, recorder_settings: RecorderSettings
) -> None:
    """Events keep coming while the table is away; after it returns each is stored exactly once, not
    merely collapsed: count() without FINAL equals the distinct ids (no batch was inserted twice)."""
    n_events = 3000

    async def produce() -> None:
        for i in range(n_events):
            await bus.publish_nowait(Subjects.step_event("acme", "r5"), step_event("r5", i), msg_id=f"r5.{i}")
            if i % 100 == 99:
                await asyncio.sleep(0.02)  # a steady stream over ~0.6 s, so the outage lands mid-run
        await bus.flush_publishes()

    producer = asyncio.create_task(produce())
    await eventually(lambda: _stored_at_least(bus, "r5", 100))
    with EventLog(recorder_settings.clickhouse) as eventlog:
        eventlog.query("DETACH TABLE step_events")
        try:
            await eventually(lambda: _failed_inserts(bus))
            await producer
            await asyncio.sleep(0.5)  # retries keep failing while everything is published
        finally:
            eventlog.query("ATTACH TABLE step_events")
    await eventually(lambda: _stored_at_least(bus, "r5", n_events), timeout_s=30)
    await asyncio.sleep(0.5)  # would a late duplicate batch still arrive?
    rows = await query_via_recorder(
        bus.nc,
        "SELECT count() AS rows_n, uniqExact(event_id) AS unique_n, (SELECT count() FROM step_events FINAL "
        "WHERE run_id = 'r5') AS final_n FROM step_events WHERE run_id = 'r5'",
    )
    assert rows == [{"rows_n": n_events, "unique_n": n_events, "final_n": n_events}]
    info = await bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER)
    assert info.num_pending == 0 and info.num_ack_pending == 0 and info.num_redelivered == 0
    assert (await health(bus))["events_recorded"] == n_events


async def _stored_at_least(bus: Bus, run_id: str, n: int) -> bool:
    rows = await query_via_recorder(bus.nc, "SELECT count() AS n FROM step_events WHERE run_id = {r:String}", {"r": run_id})
    return bool(rows[0]["n"] >= n)


async def test_bundled_step_events_are_recorded_one_row_each(bus: Bus, recorder: asyncio.Event) -> None:
    events = tuple(step_event("r6", i) for i in range(40))
    await bus.publish(Subjects.step_event_batch("acme", "r6"), StepEventBatch(events=events[:25]))
    await bus.publish(Subjects.step_event_batch("acme", "r6"), StepEventBatch(events=events[20:]))  # 5 overlap: a retry
    assert await eventually(lambda: _has(count_step_events(bus, "r6"), n=40)) == {"n": 40, "unique_n": 40}


async def test_inference_cost_comes_from_the_price_table(bus: Bus, recorder_settings: RecorderSettings) -> None:
    settings = recorder_settings.model_copy(update={"model_prices": {"big": (2.0, 8.0), "*": (0.5, 0.5)}})
    async with running_recorder(bus, settings):
        for event_id, model in (("c1", "big"), ("c2", "small")):
            call = InferenceEvent(event_id=event_id, run_id="r7", model=model, backend="sim", ok=True,
                                  prompt_tokens=1000, completion_tokens=500)  # fmt: skip
            await bus.publish(Subjects.inference_event(), call)

        async def costs() -> list[dict[str, Any]]:
            rows = await query_via_recorder(
                bus.nc, "SELECT event_id, cost_usd, ttft_ms FROM inference_calls FINAL ORDER BY event_id"
            )
            return rows if len(rows) == 2 else []

        rows = await eventually(costs)
    assert rows == [{"event_id": "c1", "cost_usd": 0.006, "ttft_ms": None},
                    {"event_id": "c2", "cost_usd": 0.00075, "ttft_ms": None}]  # fmt: skip


async def test_forged_and_out_of_range_events_are_rejected_not_recorded(bus: Bus, recorder: asyncio.Event) -> None:
    genuine = [step_event("r7", i) for i in range(3)]
    # A fourth 'succeeded' under a made-up id (it would count as an extra success), and an attempt
    # wider than the column (it used to be clamped to 65535 silently).
    forged = step_event("r7", 0).model_copy(update={"event_id": "r7.extra-success"})
    too_wide = json.loads(step_event("r7", 9).model_dump_json())
    too_wide.update(attempt=70_000, event_id=step_event_id("r7", "s9", 70_000, StepEventKind.SUCCEEDED))
    await bus.publish(Subjects.step_event_batch("acme", "r7"), StepEventBatch(events=(*genuine, forged)))
    await bus.js.publish(Subjects.step_event("acme", "r7"), json.dumps(too_wide).encode())
    # Acme's event on another tenant's subject (what a worker dedicated to that tenant may publish to).
    await bus.publish(Subjects.step_event("intruder", "r7"), step_event("r7", 4))
    await bus.publish(Subjects.step_event("acme", "r7"), step_event("r7", 3))
    assert await eventually(lambda: _has(count_step_events(bus, "r7"), n=4)) == {"n": 4, "unique_n": 4}
    details = await eventually(lambda: _rejected_at_least(bus, 3))
    assert details["events_rejected"] == 3
    rows = await query_via_recorder(bus.nc, "SELECT max(attempt) AS a FROM step_events FINAL WHERE run_id = 'r7'")
    assert rows == [{"a": 1}]


async def _rejected_at_least(bus: Bus, n: int) -> dict[str, Any] | None:
    details = await health(bus)
    return details if details["events_rejected"] >= n else None


async def test_explicit_acks_after_insert(bus: Bus, recorder: asyncio.Event) -> None:
    """One ack per message, after the insert: an ack can never cover another reader's deliveries."""
    info = await bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER)
    assert info.config.ack_policy == AckPolicy.EXPLICIT


async def test_a_redelivered_batch_collapses_by_event_id(
    bus: Bus, recorder_settings: RecorderSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every first ack is lost (as when the recorder dies right after its insert): JetStream redelivers the
    stored events, they are inserted again, and each is still one row of the log."""
    n_events = 200
    ack = Msg.ack
    redelivered: set[int] = set()  # stream sequences acked on a later delivery

    async def first_ack_lost(msg: Msg) -> None:
        if msg.subject.startswith("swarm.events."):
            if msg.metadata.num_delivered == 1:
                return
            redelivered.add(msg.metadata.sequence.stream)
        await ack(msg)

    monkeypatch.setattr(Msg, "ack", first_ack_lost)
    async with running_recorder(bus, recorder_settings.model_copy(update={"ack_wait_s": 1.0})):
        for i in range(n_events):
            await bus.publish_nowait(Subjects.step_event("acme", "r6"), step_event("r6", i), msg_id=f"r6.{i}")
        await bus.flush_publishes()

        async def redelivered_and_settled() -> bool:
            # Seen by the acks themselves: polling the consumer's num_redelivered can miss a quick batch.
            info = await bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER)
            return len(redelivered) == n_events and info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(redelivered_and_settled, timeout_s=30)
        rows = await query_via_recorder(
            bus.nc,
            "SELECT uniqExact(event_id) AS unique_n, (SELECT count() FROM step_events FINAL WHERE run_id = 'r6') "
            "AS final_n FROM step_events WHERE run_id = 'r6'",
        )
    assert rows == [{"unique_n": n_events, "final_n": n_events}]
