"""Step and inference events from the EVENTS stream into ClickHouse, in big batches, acked only once stored.

- A batch is inserted when it holds `batch_max_events` messages or its oldest waited `batch_max_ms`.
- The stream is read in bursts (`consume_batches`' linger): after a quiet spell the first message is read
  alone, the rest of its batch in one read when the batch is due; the recorder, off every step's path,
  wakes a few times a second under load instead of once per message.
- Every message is acked explicitly, after the insert that stored it: a recorder killed between fetch
  and insert leaves its messages unacked, and JetStream redelivers them (to its successor or a sibling
  replica) after ack_wait. Producers bundle events (a StepEventBatch per dispatcher flush), so an ack
  covers hundreds of events. (An AckAll consumer lost such batches: the successor's first ack also
  acknowledged the dead recorder's deliveries.)
- While ClickHouse fails, the same batch is retried with back-off (same rows, same dedup token)
  and nothing later is fetched or acked: events wait in JetStream (limits retention), and if the
  outage outlasts ack_wait the redeliveries collapse by event_id.
- A malformed message is terminated; an event whose id is not the one its fields derive, or a row the
  engine refuses, is logged, counted and dropped: it never blocks the stream or comes back.
- A redelivered event is stored again but collapses by event_id (ReplacingMergeTree, FINAL), and
  a re-inserted identical batch is dropped whole by its insert_deduplication_token.
- Producers may bundle step events: a StepEventBatch on Subjects.step_event_batch(tenant, run_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from clickhouse_connect.driver.exceptions import DataError
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from nats.aio.msg import Msg

from services.recorder.settings import RecorderSettings
from swarm.bus import MALFORMED, Bus, ConsumerSpec, Reject, consume_batches, fail
from swarm.contracts import (
    EVENTS,
    RECORDER_CONSUMER,
    InferenceEvent,
    InferenceEventBatch,
    StepEvent,
    StepEventBatch,
    Subjects,
    is_step_event_id,
)
from swarm.eventlog import EventLog

log = logging.getLogger(__name__)

STEP_EVENT_PREFIX = Subjects.step_event("*", "*").removesuffix("*.*")
STEP_EVENT_BATCH_PREFIX = Subjects.step_event_batch("*", "*").removesuffix("*.*")
INFERENCE_EVENT_SUBJECT = Subjects.inference_event()
INFERENCE_EVENT_BATCH_SUBJECT = Subjects.inference_event_batch()

# A failed insert is bad data when the driver could not serialize a row (isolate and drop it);
# any other failure (unknown table, engine or disk error, connection) is an outage: retry later.
_DATA_ERRORS = (DataError, ValueError, TypeError, OverflowError, struct.error)
_OUTAGE_ERRORS = (ClickHouseError, OSError)


def events_consumer(settings: RecorderSettings) -> ConsumerSpec:
    """The recorder's durable pull consumer on EVENTS (explicit acks, after the insert)."""
    return ConsumerSpec(
        stream=EVENTS,
        durable=RECORDER_CONSUMER,
        filter_subjects=EVENTS.subjects,
        ack_wait_s=settings.ack_wait_s,
        max_ack_pending=max(20_000, 4 * settings.batch_max_events),
    )


@dataclass
class Batch:
    """Decoded events waiting for one insert, with the messages to ack once stored (in stream order)."""

    step_events: list[StepEvent] = field(default_factory=list)
    inference_events: list[InferenceEvent] = field(default_factory=list)
    msgs: list[Msg] = field(default_factory=list)
    started_at: float = 0.0

    def __len__(self) -> int:
        return len(self.msgs)

    @property
    def events_count(self) -> int:
        """Events held (a bundle message holds several)."""
        return len(self.step_events) + len(self.inference_events)

    def age_ms(self) -> float:
        """How long the oldest event has waited."""
        return (time.monotonic() - self.started_at) * 1000 if self else 0.0


def decode(msg: Msg) -> tuple[Sequence[StepEvent], Sequence[InferenceEvent]]:
    """The step and inference events a message carries, by subject; raises ValueError (or ValidationError) when malformed."""
    subject = msg.subject
    if subject.startswith(STEP_EVENT_BATCH_PREFIX):
        return StepEventBatch.model_validate_json(msg.data).events, ()
    if subject.startswith(STEP_EVENT_PREFIX):
        return (StepEvent.model_validate_json(msg.data),), ()
    if subject == INFERENCE_EVENT_BATCH_SUBJECT:
        return (), InferenceEventBatch.model_validate_json(msg.data).events
    if subject == INFERENCE_EVENT_SUBJECT:
        return (), (InferenceEvent.model_validate_json(msg.data),)
    raise ValueError(f"no event type is recorded from subject {subject}")


class EventRecorder:
    """The EVENTS consumer loop and its counters (reported by the health probe)."""

    def __init__(self, bus: Bus, eventlog: EventLog, settings: RecorderSettings) -> None:
        self.bus = bus
        self.eventlog = eventlog
        self.settings = settings
        self.recorded_count = 0
        self.rejected_count = 0
        self.failed_inserts_count = 0
        self.pending_count = 0
        self.last_insert_ms = 0.0
        self._stop = asyncio.Event()
        self._batch = Batch()
        self._inserting: asyncio.Task[bool] | None = None

    def details(self) -> dict[str, Any]:
        """Counters for the health probe."""
        return {
            "events_recorded": self.recorded_count,
            "events_rejected": self.rejected_count,
            "events_pending": self.pending_count,
            "failed_inserts": self.failed_inserts_count,
            "last_insert_ms": round(self.last_insert_ms, 2),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, batch and insert until `stop`; then insert what is pending and return.

        One insert runs (in a thread) while the next batch is fetched and decoded: at most two
        batches are held, well under the consumer's max_ack_pending.
        """
        self._stop = stop
        psub = await self.bus.pull_subscription(events_consumer(self.settings))
        try:
            await consume_batches(
                psub, self._on_msgs, stop, batch=self.settings.batch_max_events,
                fetch_timeout_s=self._wait_s, on_idle=self._on_idle, linger_s=self._linger_s,
            )  # fmt: skip
        finally:
            if self._inserting is not None:
                await self._inserting
            if self._batch:
                await self.flush(self._batch)
            self._batch, self._inserting = Batch(), None
            self.pending_count = 0

    def _due_in_s(self) -> float:
        """Until the pending batch is due (a whole batch_max_ms for an empty one)."""
        due_ms = self.settings.batch_max_ms - self._batch.age_ms() if self._batch else self.settings.batch_max_ms
        return max(0.0, due_ms / 1000)

    def _wait_s(self) -> float:
        """Never wait past the pending batch's deadline, nor longer than fetch_timeout_s (so `stop` is seen)."""
        if not self._batch:
            return self.settings.fetch_timeout_s
        return min(self.settings.fetch_timeout_s, max(0.001, self._due_in_s()))

    def _linger_s(self) -> float:
        """Between reads of a busy stream: until the pending batch is due (read in one burst, then inserted),
        at most fetch_timeout_s (what the health probe calls pending is never older than that)."""
        return min(self.settings.fetch_timeout_s, self._due_in_s())

    async def _on_msgs(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            await self._add(self._batch, msg)
        self.pending_count = self._batch.events_count
        if len(self._batch) >= self.settings.batch_max_events or self._batch.age_ms() >= self.settings.batch_max_ms:
            await self._start_insert()

    async def _on_idle(self) -> None:
        if self._batch and self._batch.age_ms() >= self.settings.batch_max_ms:
            await self._start_insert()

    async def _start_insert(self) -> None:
        """Insert the pending batch in the background (after the previous insert finished)."""
        if self._inserting is not None:
            await self._inserting
        self._inserting = asyncio.create_task(self.flush(self._batch))
        self._batch = Batch()

    async def _add(self, batch: Batch, msg: Msg) -> None:
        try:
            step_events, inference_events = decode(msg)
        except (*MALFORMED, ValueError) as exc:  # nothing a redelivery could fix: terminated, logged once
            self.rejected_count += 1
            await fail(msg, Reject(str(exc)))
            return
        scope = Subjects.scope_of(msg.subject) if step_events else None
        genuine = [e for e in step_events if is_step_event_id(e) and (e.tenant, e.run_id) == scope]
        if len(genuine) < len(step_events):
            forged = len(step_events) - len(genuine)
            self.rejected_count += forged
            log.warning("%d step events on %s dropped: their ids are not the ones their fields derive, or their run "
                        "is not the one their subject names", forged, msg.subject)  # fmt: skip
            step_events = genuine
        if not batch:  # its age is its oldest event's: a burst read after a linger has waited that long
            batch.started_at = time.monotonic() - _stored_ago_s(msg)
        batch.step_events.extend(step_events)
        batch.inference_events.extend(inference_events)
        batch.msgs.append(msg)

    async def flush(self, batch: Batch) -> bool:
        """Insert the batch and ack it, retrying through an outage; False if `stop` came first (not acked)."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                stored = await self._insert(batch)
                break
            except _OUTAGE_ERRORS as exc:
                failures += 1
                self.failed_inserts_count += 1
                if self._stop.is_set():
                    log.error("stopping during an outage: %d events stay in JetStream: %s", batch.events_count, exc)
                    for msg in batch.msgs:
                        with contextlib.suppress(nats.errors.Error):
                            await msg.nak()
                    return False
                delay_s = min(self.settings.retry_max_s, 0.5 * 2 ** (failures - 1))
                log.warning("event log unavailable (%s); %d events wait, retrying in %.1fs", exc, batch.events_count, delay_s)
                await _sleep_unless(self._stop, delay_s)
        self.last_insert_ms = (time.monotonic() - started) * 1000
        for msg in batch.msgs:  # a lost ack only means a redelivery, which collapses by event_id
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()
        self.recorded_count += stored
        return True

    async def _insert(self, batch: Batch) -> int:
        """Insert both tables; rows the engine refuses are isolated and dropped. Returns rows stored."""
        stored = 0
        for events, insert in (
            (batch.step_events, self.eventlog.insert_step_events),
            (batch.inference_events, self.eventlog.insert_inference_events),
        ):
            if not events:
                continue
            try:
                await asyncio.to_thread(insert, events)
                stored += len(events)
            except _DATA_ERRORS as exc:  # before _OUTAGE_ERRORS: DataError is a ClickHouseError too
                log.warning("insert of %d events refused; isolating the bad rows: %s", len(events), exc)
                stored += await self._insert_isolating(events, insert)
        return stored

    async def _insert_isolating(self, events: Sequence[Any], insert: Any) -> int:
        """Insert by halves until the rows the engine refuses are alone; drop those. Outages propagate."""
        try:
            await asyncio.to_thread(insert, events)
            return len(events)
        except _DATA_ERRORS as exc:
            if len(events) == 1:
                self.rejected_count += 1
                log.warning("event %s refused by the event log, dropped: %s", getattr(events[0], "event_id", "?"), exc)
                return 0
            half = len(events) // 2
            return await self._insert_isolating(events[:half], insert) + await self._insert_isolating(
                events[half:], insert
            )


def _stored_ago_s(msg: Msg) -> float:
    """How long ago the stream stored `msg`, by the timestamp in its ack subject (by the server's clock: never
    less than 0)."""
    try:
        stored = msg.metadata.timestamp
    except (nats.errors.NotJSMessageError, ValueError, IndexError):
        return 0.0
    return max(0.0, time.time() - stored.timestamp())


async def _sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep `delay_s`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
