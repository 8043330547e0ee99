"""The run index (RUN_INDEX_BUCKET): one record per run, derived from the RUNS stream by its one writer.

Nobody else writes the index (the grants of `swarm.ops.security` say so): the planner, dispatcher and
aggregator publish their run events, and this consumer folds them into each run's record with the same
`apply_run_event` the `runs` table uses. It has its own durable consumer, so the index keeps up while
ClickHouse is away. A record moves by compare-and-set from the revision it was read at: a second
recorder replica on the same consumer never overwrites a newer status with an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import ValidationError

from services.recorder.runs import (
    RUNS_BATCH,
    RecordedRunEvent,
    apply_run_event,
    empty_run_row,
    run_events_consumer,
)
from services.recorder.settings import RecorderSettings
from swarm.bus import Bus, ConsumerSpec, Retry, consume_batches, fail
from swarm.contracts import (
    RUN_EVENT,
    RUN_INDEX_BUCKET,
    RUN_INDEX_CONSUMER,
    TERMINAL_RUN_EVENTS,
    Keys,
    RunEventKind,
    RunRecord,
    RunStatus,
    record_goal,
)

log = logging.getLogger(__name__)

INDEXED_RUN_EVENTS = (RunEventKind.ACCEPTED, RunEventKind.PLANNED, RunEventKind.EXECUTED, *TERMINAL_RUN_EVENTS)


def run_index_consumer(settings: RecorderSettings) -> ConsumerSpec:
    """The index's durable pull consumer on RUNS: every event that changes a run's status."""
    return run_events_consumer(RUN_INDEX_CONSUMER, INDEXED_RUN_EVENTS, settings)


def record_of(row: dict[str, Any]) -> RunRecord:
    """The run index record of a run's row (its goal cut by `record_goal`: the whole goal is in RUNS and the
    `runs` table)."""
    return RunRecord(
        run_id=row["run_id"], tenant=row["tenant"], status=RunStatus(row["status"]), goal=record_goal(row["goal"]),
        steps_total=row["steps_total"], agents_count=row["agents_count"], submitted_at=row["submitted_at"],
        error=row["error"] or None,
    )  # fmt: skip


def row_of(record: RunRecord) -> dict[str, Any]:
    """A run's row as far as its index record tells it (the fields `apply_run_event` reads)."""
    return {
        **empty_run_row(record.run_id, record.tenant), "status": str(record.status), "goal": record.goal,
        "steps_total": record.steps_total, "agents_count": record.agents_count,
        "submitted_at": record.submitted_at, "error": record.error or "",
    }  # fmt: skip


class RunIndexer:
    """The RUNS consumer that writes the run index."""

    def __init__(self, bus: Bus, settings: RecorderSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.indexed_count = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Fold run events into the index until `stop`."""
        psub = await self.bus.pull_subscription(run_index_consumer(self.settings))
        await consume_batches(psub, self._on_msgs, stop, batch=RUNS_BATCH, fetch_timeout_s=self.settings.fetch_timeout_s)

    async def _on_msgs(self, msgs: list[Msg]) -> None:
        by_run: dict[str, list[tuple[Msg, RecordedRunEvent]]] = {}
        for msg in msgs:  # in stream order, so each run's events stay in order
            try:
                event: RecordedRunEvent = RUN_EVENT.validate_json(msg.data)  # type: ignore[assignment]  # the filter admits only these kinds
            except ValidationError as exc:
                await fail(msg, exc)
                continue
            by_run.setdefault(event.run_id, []).append((msg, event))
        await asyncio.gather(*(self._index_run(items) for items in by_run.values()))

    async def _index_run(self, items: list[tuple[Msg, RecordedRunEvent]]) -> None:
        try:
            await self.apply([event for _, event in items])
        except Exception as exc:  # this run's events go through the one policy; other runs are unaffected
            for msg, _ in items:
                await fail(msg, exc)
            return
        for msg, _ in items:
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
        self.indexed_count += len(items)

    async def apply(self, events: list[RecordedRunEvent]) -> RunRecord:
        """Fold one run's events into its index record and write it (compare-and-set); the record written."""
        first = events[0]
        kv = await self.bus.kv(RUN_INDEX_BUCKET)
        revision: int | None = None
        row = empty_run_row(first.run_id, first.tenant)
        try:
            entry = await kv.get(Keys.run_record(first.run_id))
            revision = entry.revision
            row = row_of(RunRecord.model_validate_json(entry.value or b""))
        except KeyNotFoundError:
            pass
        except ValidationError as exc:  # rebuilt from these events rather than blocking them
            log.warning("run %s: unreadable index record replaced: %s", first.run_id, exc)
        for event in events:
            row = apply_run_event(row, event)
        record = record_of(row)
        value = record.model_dump_json().encode()
        try:
            if revision is None:
                await kv.create(Keys.run_record(first.run_id), value)
            else:
                await kv.update(Keys.run_record(first.run_id), value, last=revision)
        except KeyWrongLastSequenceError as exc:  # another replica moved it meanwhile: read it again
            raise Retry(f"run {first.run_id}: index record changed meanwhile", delay_s=0.1) from exc
        return record
