"""Step and inference events from the EVENTS stream into ClickHouse, in big batches, acked only once stored.

- A batch is inserted when it holds `batch_max_events` messages or its oldest waited `batch_max_ms`.
- Acks follow a successful insert, in stream order. The consumer's ack policy is AckAll: one ack
  (of the batch's last message) covers the whole batch, which is what lets one recorder keep up
  with 20k+ events/s. It also means ONE reader per durable consumer: a second replica's ack would
  cover the first one's unstored messages. Scale out with one durable per subject partition instead.
  A consumer created earlier with explicit acks keeps them (every message acked).
- While ClickHouse fails, the same batch is retried with back-off (same rows, same dedup token)
  and nothing later is fetched or acked: events wait in JetStream (limits retention), and if the
  outage outlasts ack_wait the redeliveries collapse by event_id.
- A malformed message, or a row the engine refuses, is logged, counted and dropped (acked with its
  batch): it never blocks the stream or comes back.
- A redelivered event is stored again but collapses by event_id (ReplacingMergeTree, FINAL), and
  a re-inserted identical batch is dropped whole by its insert_deduplication_token.
- Producers may bundle step events: a StepEventBatch on Subjects.step_event_batch(run_id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from clickhouse_connect.driver.exceptions import DataError
from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy
from pydantic import ValidationError

from services.recorder.settings import RecorderSettings
from swarm.bus import Bus, ConsumerSpec
from swarm.contracts import (
    EVENTS,
    RECORDER_CONSUMER,
    InferenceEvent,
    InferenceEventBatch,
    StepEvent,
    StepEventBatch,
    Subjects,
)
from swarm.eventlog import EventLog

log = logging.getLogger(__name__)

STEP_EVENT_PREFIX = Subjects.step_event("")
STEP_EVENT_BATCH_PREFIX = Subjects.step_event_batch("")
INFERENCE_EVENT_SUBJECT = Subjects.inference_event()
INFERENCE_EVENT_BATCH_SUBJECT = Subjects.inference_event_batch()

# A failed insert is bad data when the driver could not serialize a row (isolate and drop it);
# any other failure (unknown table, engine or disk error, connection) is an outage: retry later.
_DATA_ERRORS = (DataError, ValueError, TypeError, OverflowError, struct.error)
_OUTAGE_ERRORS = (ClickHouseError, OSError)
_STATUS_HEADER = "Status"


def events_consumer(settings: RecorderSettings) -> ConsumerSpec:
    """The recorder's durable pull consumer on EVENTS (AckAll: one ack per batch, one reader)."""
    return ConsumerSpec(
        stream=EVENTS,
        durable=RECORDER_CONSUMER,
        filter_subjects=EVENTS.subjects,
        ack_wait_s=settings.ack_wait_s,
        max_ack_pending=max(20_000, 4 * settings.batch_max_events),
        ack_policy="all",
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


class BatchPuller:
    """Reads a durable pull consumer with JetStream's pull API: one request per batch, a callback per message.

    nats-py's `fetch` awaits every message with its own timeout (asyncio.wait_for), which cost the
    recorder about a third of its CPU; here a message is one list append.
    """

    def __init__(self, nc: NatsClient, stream: str, durable: str) -> None:
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._msgs: list[Msg] = []
        self._want = 0
        self._done = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe the inbox the requested messages arrive on."""
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=1_000_000)

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.data and msg.headers and _STATUS_HEADER in msg.headers:
            self._done.set()  # 404/408/409: this request is over (no more, expired, or limits)
            return
        self._msgs.append(msg)
        if len(self._msgs) >= self._want:
            self._done.set()

    async def fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        """Up to `batch` messages, waiting at most about `timeout_s` for them."""
        if len(self._msgs) < batch:
            self._want = batch
            self._done.clear()
            request = {"batch": batch - len(self._msgs), "expires": int(timeout_s * 1e9)}
            await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout_s + 0.5)
        # Messages of a request that outlived our wait arrive later and are kept for the next call.
        msgs, self._msgs = self._msgs[:batch], self._msgs[batch:]
        return msgs

    async def stop(self) -> None:
        """Unsubscribe; undelivered and unacked messages are redelivered by JetStream."""
        if self._sub is not None:
            await self._sub.unsubscribe()


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
        self.ack_all = True
        self._stop = asyncio.Event()

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
        batches are held, well under the consumer's max_ack_pending, and acks stay in stream order.
        """
        self._stop = stop
        spec = events_consumer(self.settings)
        await self.bus.ensure_consumer(spec)
        info = await self.bus.js.consumer_info(spec.stream.name, spec.durable)
        self.ack_all = info.config.ack_policy == AckPolicy.ALL
        puller = BatchPuller(self.bus.nc, spec.stream.name, spec.durable)
        await puller.start()
        batch = Batch()
        inserting: asyncio.Task[bool] | None = None
        max_msgs = self.settings.batch_max_events
        while not stop.is_set():
            # Never wait past the batch's deadline, nor longer than fetch_timeout_s (so `stop` is seen).
            wait_s = self.settings.fetch_timeout_s
            if batch:
                wait_s = min(wait_s, max(0.001, (self.settings.batch_max_ms - batch.age_ms()) / 1000))
            try:
                msgs = await puller.fetch(max_msgs - len(batch), timeout_s=wait_s)
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._add(batch, msg)
            self.pending_count = batch.events_count
            if not batch or (len(batch) < max_msgs and batch.age_ms() < self.settings.batch_max_ms):
                continue
            if inserting is not None:
                await inserting
            inserting = asyncio.create_task(self.flush(batch))
            batch = Batch()
        await puller.stop()
        if inserting is not None:
            await inserting
        if batch:
            await self.flush(batch)
        self.pending_count = 0

    async def _add(self, batch: Batch, msg: Msg) -> None:
        try:
            decoded = decode(msg)
        except (ValidationError, ValueError, json.JSONDecodeError) as exc:
            self.rejected_count += 1
            log.warning("malformed event on %s dropped: %s", msg.subject, str(exc)[:300])
            if self.ack_all:
                batch.msgs.append(msg)  # acked with the batch; a term would ack every earlier message now
            else:
                await msg.term()
            return
        if not batch:
            batch.started_at = time.monotonic()
        step_events, inference_events = decoded
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
                    if not self.ack_all:
                        for msg in batch.msgs:
                            await msg.nak()
                    return False
                delay_s = min(self.settings.retry_max_s, 0.5 * 2 ** (failures - 1))
                log.warning("event log unavailable (%s); %d events wait, retrying in %.1fs", exc, batch.events_count, delay_s)
                await _sleep_unless(self._stop, delay_s)
        self.last_insert_ms = (time.monotonic() - started) * 1000
        if self.ack_all:
            await batch.msgs[-1].ack()
        else:
            for msg in batch.msgs:
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


async def _sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep `delay_s`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
