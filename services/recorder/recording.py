"""Step and inference events from the EVENTS stream into ClickHouse, in big batches, acked only once stored.

- A batch is inserted when it holds `batch_max_events` events or its oldest waited `batch_max_ms`.
- Acks follow a successful insert; while ClickHouse fails, the batch is nak'ed and the recorder
  backs off, so events wait in JetStream (limits retention) and nothing is lost.
- A malformed event is terminated and logged: it never blocks the stream or comes back.
- A redelivered event is stored again but collapses by event_id (ReplacingMergeTree, FINAL), and
  a re-inserted identical batch is dropped whole by its insert_deduplication_token.
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
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.recorder.settings import RecorderSettings
from swarm.bus import Bus, ConsumerSpec
from swarm.contracts import EVENTS, RECORDER_CONSUMER, InferenceEvent, StepEvent, Subjects
from swarm.eventlog import EventLog

log = logging.getLogger(__name__)

STEP_EVENT_PREFIX = Subjects.step_event("")
INFERENCE_EVENT_SUBJECT = Subjects.inference_event()

# A failed insert is bad data when the driver could not serialize a row (isolate and terminate it);
# any other failure (unknown table, engine or disk error, connection) is an outage: nak and back off.
_DATA_ERRORS = (DataError, ValueError, TypeError, OverflowError, struct.error)
_OUTAGE_ERRORS = (ClickHouseError, OSError)


def events_consumer(settings: RecorderSettings) -> ConsumerSpec:
    """The recorder's durable pull consumer on EVENTS."""
    return ConsumerSpec(
        stream=EVENTS,
        durable=RECORDER_CONSUMER,
        filter_subjects=EVENTS.subjects,
        ack_wait_s=settings.ack_wait_s,
        max_ack_pending=max(20_000, 4 * settings.batch_max_events),
    )


@dataclass
class Batch:
    """Decoded events waiting for one insert, with the messages to ack once stored."""

    step_events: list[StepEvent] = field(default_factory=list)
    step_msgs: list[Msg] = field(default_factory=list)
    inference_events: list[InferenceEvent] = field(default_factory=list)
    inference_msgs: list[Msg] = field(default_factory=list)
    started_at: float = 0.0

    def __len__(self) -> int:
        return len(self.step_msgs) + len(self.inference_msgs)

    def age_ms(self) -> float:
        """How long the oldest event has waited."""
        return (time.monotonic() - self.started_at) * 1000 if self else 0.0


def decode(msg: Msg) -> StepEvent | InferenceEvent:
    """The event a message carries, by subject; raises ValueError (or ValidationError) when malformed."""
    if msg.subject.startswith(STEP_EVENT_PREFIX):
        return StepEvent.model_validate_json(msg.data)
    if msg.subject == INFERENCE_EVENT_SUBJECT:
        return InferenceEvent.model_validate_json(msg.data)
    raise ValueError(f"no event type is recorded from subject {msg.subject}")


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
        psub = await self.bus.pull_subscription(events_consumer(self.settings))
        batch = Batch()
        inserting: asyncio.Task[bool] | None = None
        failures = 0
        max_events = self.settings.batch_max_events
        while not stop.is_set():
            # Never wait past the batch's deadline, nor longer than fetch_timeout_s (so `stop` is seen).
            wait_s = self.settings.fetch_timeout_s
            if batch:
                wait_s = min(wait_s, max(0.001, (self.settings.batch_max_ms - batch.age_ms()) / 1000))
            try:
                msgs = await psub.fetch(max_events - len(batch), timeout=wait_s)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._add(batch, msg)
            self.pending_count = len(batch)
            if not batch or (len(batch) < max_events and batch.age_ms() < self.settings.batch_max_ms):
                continue
            if inserting is not None:
                failures = 0 if await inserting else failures + 1
                if failures:
                    delay_s = min(self.settings.retry_max_s, 0.5 * 2 ** (failures - 1))
                    log.warning("event log unavailable; events wait in JetStream, retrying in %.1fs", delay_s)
                    await _sleep_unless(stop, delay_s)
            inserting = asyncio.create_task(self.flush(batch))
            batch = Batch()
        await psub.unsubscribe()
        if inserting is not None:
            await inserting
        if batch:
            await self.flush(batch)
        self.pending_count = 0

    async def _add(self, batch: Batch, msg: Msg) -> None:
        try:
            event = decode(msg)
        except (ValidationError, ValueError, json.JSONDecodeError) as exc:
            self.rejected_count += 1
            log.warning("malformed event on %s terminated: %s", msg.subject, str(exc)[:300])
            await msg.term()
            return
        if not batch:
            batch.started_at = time.monotonic()
        if isinstance(event, StepEvent):
            batch.step_events.append(event)
            batch.step_msgs.append(msg)
        else:
            batch.inference_events.append(event)
            batch.inference_msgs.append(msg)

    async def flush(self, batch: Batch) -> bool:
        """Insert the batch and ack it; on an outage nak it (redelivered later). Returns whether it was stored."""
        started = time.monotonic()
        try:
            if batch.step_events:
                await asyncio.to_thread(self.eventlog.insert_step_events, batch.step_events)
            if batch.inference_events:
                await asyncio.to_thread(self.eventlog.insert_inference_events, batch.inference_events)
        except _DATA_ERRORS as exc:  # before _OUTAGE_ERRORS: DataError is a ClickHouseError too
            log.warning("insert of %d events refused; isolating the bad rows: %s", len(batch), exc)
            await self._insert_isolating(batch.step_events, batch.step_msgs, self.eventlog.insert_step_events)
            await self._insert_isolating(
                batch.inference_events, batch.inference_msgs, self.eventlog.insert_inference_events
            )
            return True
        except _OUTAGE_ERRORS as exc:
            return await self._nak_all(batch, exc)
        self.last_insert_ms = (time.monotonic() - started) * 1000
        for msg in (*batch.step_msgs, *batch.inference_msgs):
            await msg.ack()
        self.recorded_count += len(batch)
        return True

    async def _nak_all(self, batch: Batch, exc: Exception) -> bool:
        self.failed_inserts_count += 1
        log.error("insert of %d events failed; they will be redelivered: %s", len(batch), exc)
        for msg in (*batch.step_msgs, *batch.inference_msgs):
            await msg.nak(delay=self.settings.retry_max_s / 4)
        return False

    async def _insert_isolating(self, events: Sequence[Any], msgs: Sequence[Msg], insert: Any) -> None:
        """Insert by halves until the rows the engine refuses are alone; terminate those, ack the rest."""
        if not events:
            return
        try:
            await asyncio.to_thread(insert, events)
        except _DATA_ERRORS as exc:  # before _OUTAGE_ERRORS: DataError is a ClickHouseError too
            if len(events) == 1:
                self.rejected_count += 1
                log.warning("event %s refused by the event log, terminated: %s", msgs[0].subject, exc)
                await msgs[0].term()
                return
            half = len(events) // 2
            await self._insert_isolating(events[:half], msgs[:half], insert)
            await self._insert_isolating(events[half:], msgs[half:], insert)
            return
        except _OUTAGE_ERRORS as exc:
            log.error("insert of %d events failed; they will be redelivered: %s", len(msgs), exc)
            for msg in msgs:
                await msg.nak(delay=self.settings.retry_max_s / 4)
            return
        for msg in msgs:
            await msg.ack()
        self.recorded_count += len(msgs)


async def _sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep `delay_s`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
