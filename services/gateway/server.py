"""The gateway's request loop: admission, a priority queue in front of the engine slots, replies and events.

Requests arrive by core NATS request/reply on the gateway queue group (no JetStream on the hot path).
- Admission: at most `max_queue` requests wait or run at once; the next one is answered 'overloaded' at
  once, with a Retry-After header that the client honors.
- Scheduling: at most `slots` requests run in the engine; the others wait in a priority queue (planner and
  aggregator calls before bulk worker calls, first come first served within a class).
- Deadlines: a request with `deadline_ms` still queued when it runs out is answered 'deadline exceeded'
  without running; one still running is cancelled and answered the same.
- Bad input (invalid request, unknown model, malformed schema) is answered before it takes a slot; engine
  errors and crashes become error replies, and the gateway keeps serving.
- Streaming (`stream=true`): InferenceChunk messages to the reply subject, the last one carrying the reply.
Every call, served or not, emits an InferenceEvent; they are published in batches (every
EVENTS_FLUSH_S, or EVENTS_PER_BATCH at once), one JetStream message for many calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.gateway.backends import create_engine
from services.gateway.engine import Completion, Engine, EngineError
from services.gateway.schemacheck import InvalidSchema, check_schema
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus, answerable
from swarm.contracts import (
    ERROR_MAX_CHARS,
    GATEWAY_QUEUE_GROUP,
    InferenceCancel,
    InferenceChunk,
    InferenceEvent,
    InferenceEventBatch,
    InferenceRequest,
    InferenceResponse,
    Subjects,
    cut,
)
from swarm.inference import DEADLINE_EXCEEDED, OVERLOADED, RETRY_AFTER_HEADER
from swarm.schemas import describe_validation_error

log = logging.getLogger(__name__)

RETRY_AFTER_MIN_S = 0.05
RETRY_AFTER_MAX_S = 30.0
SERVICE_TIME_SMOOTHING = 0.1  # weight of the newest call in the moving average of engine time
MAX_ERROR_CHARS = 1000
DRAIN_TIMEOUT_S = 30.0  # at stop, how long admitted requests may take to finish
# Scheduling classes, 0 first: the calls a whole run waits on go before the bulk of worker calls.
CALLER_PRIORITY = {"planner": 0, "aggregator": 0}
DEFAULT_PRIORITY = 5
EVENTS_FLUSH_S = 0.05
EVENTS_PER_BATCH = 500
CANCELLED_BY_CALLER = "cancelled by the caller"


def peek(data: bytes) -> tuple[str, bool]:
    """The request_id and stream flag of a payload not (yet) validated: ('', False) when unreadable."""
    try:
        body = json.loads(data)
    except ValueError:
        return "", False
    if not isinstance(body, dict):
        return "", False
    request_id = body.get("request_id")
    return (request_id if isinstance(request_id, str) else ""), body.get("stream") is True


def priority_of(request: InferenceRequest) -> int:
    """The request's scheduling class: explicit, else from its caller."""
    if request.priority is not None:
        return request.priority
    return CALLER_PRIORITY.get(request.caller, DEFAULT_PRIORITY)


@dataclass(order=True, slots=True)
class Admitted:
    """A request admitted and waiting for an engine slot (ordered by class, then arrival)."""

    priority: int
    seq: int
    msg: Msg = field(compare=False)
    request: InferenceRequest = field(compare=False)
    received_at: float = field(compare=False)
    deadline_at: float | None = field(compare=False)
    expiry: asyncio.TimerHandle | None = field(default=None, compare=False)
    done: bool = field(default=False, compare=False)  # started or expired: skipped when popped


class GatewayServer:
    """Serves InferenceRequests from one engine, with bounded admission and a priority queue."""

    def __init__(self, bus: Bus, engine: Engine, settings: GatewaySettings) -> None:
        self.bus = bus
        self.engine = engine
        self.max_queue = settings.max_queue
        self.slots = settings.slots or max(1, engine.concurrency)
        self.models = {"default", engine.model}
        self.in_flight = 0  # admitted: queued + running
        self.running = 0
        self.served_count = 0
        self.failed_count = 0
        self.rejected_count = 0
        self.expired_count = 0
        self._queue: list[Admitted] = []
        self._seq = itertools.count()
        self._service_ms = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._subscription: Subscription | None = None
        self._cancel_subscription: Subscription | None = None
        # The calls a cancel can name: queued ones by their entry, running ones by their task.
        self._calls: dict[str, Admitted | asyncio.Task[Any]] = {}
        # Running calls cancelled on purpose (by their caller or their deadline, not by a stop), and why.
        self._aborted: dict[str, str] = {}
        self.cancelled_count = 0
        self._events: list[InferenceEvent] = []
        self._events_flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the gateway queue group."""
        self._events_flusher = asyncio.create_task(self._flush_events_periodically())
        self._subscription = await self.bus.nc.subscribe(
            Subjects.INFER, queue=GATEWAY_QUEUE_GROUP, cb=self._on_message
        )
        # No queue group: the cancel reaches every replica, and the one holding the call stops it.
        self._cancel_subscription = await self.bus.nc.subscribe(Subjects.INFER_CANCEL, cb=self._on_cancel)

    async def flush_events(self) -> None:
        """Publish the events recorded so far as one InferenceEventBatch (without waiting for the ack)."""
        events, self._events = self._events, []
        if events:
            await self.bus.publish_nowait(Subjects.inference_event_batch(), InferenceEventBatch(events=tuple(events)))

    async def _record(self, event: InferenceEvent) -> None:
        self._events.append(event)
        if len(self._events) >= EVENTS_PER_BATCH:
            await self.flush_events()

    async def _flush_events_periodically(self) -> None:
        while True:
            await asyncio.sleep(EVENTS_FLUSH_S)
            try:
                await self.flush_events()
            except nats.errors.Error as exc:  # the events of that batch are lost; serving goes on
                log.warning("inference events not published: %s", exc)

    def health(self) -> dict[str, Any]:
        """What the health probe reports."""
        return {
            "backend": self.engine.name,
            "model": self.engine.model,
            "in_flight": self.in_flight,
            "running": self.running,
            "queued": self.in_flight - self.running,
            "slots": self.slots,
            "max_queue": self.max_queue,
            "served_count": self.served_count,
            "failed_count": self.failed_count,
            "rejected_count": self.rejected_count,
            "expired_count": self.expired_count,
            "cancelled_count": self.cancelled_count,
        }

    async def stop(self) -> None:
        """Leave the queue group, then let admitted requests finish and reply (cancelled past the drain timeout)."""
        if self._subscription is not None:
            await self._subscription.drain()  # type: ignore[no-untyped-call]  # nats-py is untyped here
            self._subscription = None
        if self._cancel_subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._cancel_subscription.unsubscribe()
            self._cancel_subscription = None
        try:
            await asyncio.wait_for(self._idle.wait(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            # Replies went out before events; what is left waits on JetStream acks that are not coming.
            log.warning("stopping with %d requests unfinished after %.0fs", self.in_flight, DRAIN_TIMEOUT_S)
            for entry in self._queue:
                if not entry.done:
                    self._finish_queued(entry)
            for task in set(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._events_flusher is not None:
            self._events_flusher.cancel()
            self._events_flusher = None
        with contextlib.suppress(nats.errors.Error):
            await self.flush_events()  # the bus waits for its ack when it closes

    # ------------------------------------------------------------------ admission and scheduling

    async def _on_message(self, msg: Msg) -> None:
        # Runs in the subscription's single delivery loop: decide, then hand off at once.
        received_at = time.perf_counter()
        if not answerable(msg):
            return
        if self.in_flight >= self.max_queue:
            self._spawn(self._reject_overloaded(msg))
            return
        try:
            request = InferenceRequest.model_validate_json(msg.data)
        except ValidationError as exc:
            request_id, stream = peek(msg.data)
            error = f"invalid request: {describe_validation_error(exc, max_problems=3)}"
            self._spawn(self._reply_failure(msg, request_id, None, error, stream))
            return
        error = self._input_error(request)
        if error:
            self._spawn(self._reply_failure(msg, request.request_id, request, error, request.stream))
            return
        self.in_flight += 1
        self._idle.clear()
        deadline_at = received_at + request.deadline_ms / 1000.0 if request.deadline_ms else None
        if self.running < self.slots and not self._queue:
            self._start(msg, request, received_at, deadline_at)
            return
        entry = Admitted(priority_of(request), next(self._seq), msg, request, received_at, deadline_at)
        if deadline_at is not None:
            delay_s = max(0.0, deadline_at - time.perf_counter())
            entry.expiry = asyncio.get_running_loop().call_later(delay_s, self._expire, entry)
        heapq.heappush(self._queue, entry)
        self._calls[request.request_id] = entry
        self._next()  # a slot may be free behind queued entries that already expired

    async def _on_cancel(self, msg: Msg) -> None:
        """A caller gave a call up: a queued one is dropped, a running one cancelled (the engine aborts it)."""
        try:
            request_id = InferenceCancel.model_validate_json(msg.data).request_id
        except ValidationError:
            log.warning("malformed inference cancel ignored: %r", msg.data[:200])
            return
        call = self._calls.get(request_id)
        if isinstance(call, Admitted):
            if not call.done:
                self.cancelled_count += 1
                if call.expiry is not None:
                    call.expiry.cancel()
                self._finish_queued(call, CANCELLED_BY_CALLER)
        elif call is not None and not call.done():
            self.cancelled_count += 1
            # Once: when its deadline cancelled it already, the caller's reason still wins.
            if request_id not in self._aborted:
                call.cancel()
            self._aborted[request_id] = CANCELLED_BY_CALLER

    def _input_error(self, request: InferenceRequest) -> str:
        """Why the request cannot be served by this gateway at all, or ''."""
        if request.model not in self.models:
            return f"unknown model {request.model!r}: this gateway serves {self.engine.model!r}"
        if request.json_schema is not None:
            try:
                check_schema(request.json_schema)
            except InvalidSchema as exc:
                return f"invalid json_schema: {exc}"[:MAX_ERROR_CHARS]
        return ""

    def _start(self, msg: Msg, request: InferenceRequest, received_at: float, deadline_at: float | None) -> None:
        self.running += 1
        self._spawn(self._run(msg, request, received_at, deadline_at))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next(self) -> None:
        """Start queued requests while slots are free, best class first."""
        while self._queue and self.running < self.slots:
            entry = heapq.heappop(self._queue)
            if entry.done:
                continue
            entry.done = True
            if entry.expiry is not None:
                entry.expiry.cancel()
            self._start(entry.msg, entry.request, entry.received_at, entry.deadline_at)

    def _deadline_passed(self, request_id: str, task: asyncio.Task[Any]) -> None:
        """A running request's deadline ran out: cancel it (the engine stops generating); it is answered
        'deadline exceeded'."""
        if request_id not in self._aborted and not task.done():
            self._aborted[request_id] = DEADLINE_EXCEEDED
            task.cancel()

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def _expire(self, entry: Admitted) -> None:
        """A queued request's deadline ran out: answer it without running it."""
        if entry.done:
            return
        self.expired_count += 1
        waited_ms = (time.perf_counter() - entry.received_at) * 1000.0
        error = f"{DEADLINE_EXCEEDED}: still queued after {waited_ms:.0f} ms (deadline_ms {entry.request.deadline_ms:g})"
        self._finish_queued(entry, error)

    def _finish_queued(self, entry: Admitted, error: str = "gateway stopping: the request was not run") -> None:
        entry.done = True
        self._calls.pop(entry.request.request_id, None)
        self._release()
        request = entry.request
        self._spawn(self._reply_failure(entry.msg, request.request_id, request, error, request.stream))

    # ------------------------------------------------------------------ running one request

    async def _run(
        self, msg: Msg, request: InferenceRequest, received_at: float, deadline_at: float | None
    ) -> None:
        started_at = time.perf_counter()
        stream_to = msg.reply if request.stream else ""
        index = 0
        task = asyncio.current_task()
        assert task is not None
        request_id = request.request_id
        self._calls[request_id] = task
        # The deadline is one timer that cancels this task, as asyncio.timeout does, without a context manager
        # and its task lookups around every call (this runs per request; the deadline is rarely reached).
        expiry = None
        if deadline_at is not None:
            delay_s = max(0.0, deadline_at - started_at)
            expiry = asyncio.get_running_loop().call_later(delay_s, self._deadline_passed, request_id, task)
        try:
            try:
                if stream_to:
                    completion, first_token_at, index = await self._stream(request, stream_to)
                else:
                    completion = await self.engine.generate(request)
                    first_token_at = completion.first_token_at
            finally:
                if expiry is not None:
                    expiry.cancel()  # before any other await: the timer cannot cancel the reply
            response, event = self._success(request, completion, received_at, started_at, first_token_at)
        except EngineError as exc:
            response, event = self._failure(request.request_id, request, str(exc)[:MAX_ERROR_CHARS])
        except Exception as exc:
            # The one place an engine failure becomes an error reply: the gateway keeps serving.
            log.exception("engine %s failed on request %s", self.engine.name, request.request_id)
            error = f"engine error: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            response, event = self._failure(request.request_id, request, error)
        except asyncio.CancelledError:
            reason = self._aborted.get(request_id)
            if reason is None:
                raise  # the gateway is stopping
            task.uncancel()  # the caller's cancel or the deadline, handled here: the engine stopped generating
            if reason == DEADLINE_EXCEEDED:
                elapsed_ms = (time.perf_counter() - received_at) * 1000.0
                reason = f"{DEADLINE_EXCEEDED}: cancelled while running after {elapsed_ms:.0f} ms"
            response, event = self._failure(request_id, request, reason)
        finally:
            self._calls.pop(request_id, None)
            self._aborted.pop(request_id, None)
            self.running -= 1
            self._release()
            self._next()
        if msg.reply:
            await self._send(msg.reply, response, stream=request.stream, index=index)
        await self._record(event)

    async def _stream(self, request: InferenceRequest, reply: str) -> tuple[Completion, float | None, int]:
        """Forward the engine's deltas as chunks; the Completion, when the first token came, the next index."""
        publish = self.bus.nc.publish
        index = 0
        first_token_at: float | None = None
        # Closed on every way out (a failed publish too), so the engine learns at once that nobody reads on
        # and can stop generating (trtllm aborts the request) instead of when the generator is collected.
        async with contextlib.aclosing(self.engine.generate_stream(request)) as items:
            async for item in items:
                if isinstance(item, Completion):
                    return item, first_token_at, index
                if not item:
                    continue
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                chunk = InferenceChunk(request_id=request.request_id, index=index, delta=item)
                await publish(reply, chunk.model_dump_json().encode())
                index += 1
        raise RuntimeError(f"engine {self.engine.name} ended a stream without its completion")

    async def _send(
        self,
        reply: str,
        response: InferenceResponse,
        stream: bool,
        index: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if stream:
            body = InferenceChunk(request_id=response.request_id, index=index, done=True, response=response)
            payload = body.model_dump_json().encode()
        else:
            payload = response.model_dump_json().encode()
        await self.bus.nc.publish(reply, payload, headers=headers)

    # ------------------------------------------------------------------ replies and events

    def _success(
        self,
        request: InferenceRequest,
        completion: Completion,
        received_at: float,
        started_at: float,
        first_token_at: float | None,
    ) -> tuple[InferenceResponse, InferenceEvent]:
        finished_at = time.perf_counter()
        queue_ms = (started_at - received_at) * 1000.0 + completion.queue_ms
        duration_ms = max(0.0, (finished_at - started_at) * 1000.0 - completion.queue_ms)
        self._service_ms += SERVICE_TIME_SMOOTHING * (duration_ms - self._service_ms)
        self.served_count += 1
        engine = self.engine
        response = InferenceResponse(
            request_id=request.request_id,
            ok=True,
            content=completion.content,
            model=engine.model,
            backend=engine.name,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            queue_ms=queue_ms,
            duration_ms=duration_ms,
        )
        event = InferenceEvent(
            event_id=request.request_id,
            run_id=request.run_id or "",
            step_id=request.step_id or "",
            caller=request.caller,
            model=engine.model,
            backend=engine.name,
            ok=True,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            queue_ms=queue_ms,
            duration_ms=duration_ms,
            ttft_ms=(first_token_at - received_at) * 1000.0 if first_token_at is not None else None,
        )
        return response, event

    def _failure(
        self, request_id: str, request: InferenceRequest | None, error: str
    ) -> tuple[InferenceResponse, InferenceEvent]:
        self.failed_count += 1
        engine = self.engine
        error = cut(error, ERROR_MAX_CHARS)  # an engine's error may quote a whole reply
        response = InferenceResponse(
            request_id=request_id, ok=False, error=error, model=engine.model, backend=engine.name
        )
        event = InferenceEvent(
            event_id=request_id or uuid.uuid4().hex,
            run_id=(request.run_id or "") if request else "",
            step_id=(request.step_id or "") if request else "",
            caller=request.caller if request else "",
            model=engine.model,
            backend=engine.name,
            ok=False,
            error=error,
        )
        return response, event

    async def _reply_failure(
        self, msg: Msg, request_id: str, request: InferenceRequest | None, error: str, stream: bool
    ) -> None:
        response, event = self._failure(request_id, request, error)
        if msg.reply:
            await self._send(msg.reply, response, stream=stream)
        await self._record(event)

    def retry_after_s(self) -> float:
        """When a rejected caller should try again: the time to work off the queue, roughly."""
        backlog_s = self._service_ms / 1000.0 * self.in_flight / max(1, self.slots)
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, backlog_s))

    async def _reject_overloaded(self, msg: Msg) -> None:
        self.rejected_count += 1
        request_id, stream = peek(msg.data)
        error = f"{OVERLOADED}: {self.in_flight} requests admitted (max_queue {self.max_queue})"
        response, event = self._failure(request_id, None, error)
        self.failed_count -= 1  # counted as rejected, not failed
        if msg.reply:
            headers = {RETRY_AFTER_HEADER: f"{self.retry_after_s():.3f}"}
            await self._send(msg.reply, response, stream=stream, headers=headers)
        await self._record(event)


@contextlib.asynccontextmanager
async def serve(settings: GatewaySettings, bus: Bus, service: str = "gateway") -> AsyncIterator[GatewayServer]:
    """Load the engine, join the queue group and answer health probes; on exit drain, stop and unload.

    The service's entry point and the load test's in-process gateway both serve through this.
    """
    engine = await asyncio.to_thread(create_engine, settings)
    try:
        await bus.provision()
        server = GatewayServer(bus, engine, settings)
        await server.start()
        await bus.serve_health(service, server.health)
        log.info("serving %s (%s), max_queue %d", engine.model, engine.name, settings.max_queue)
        try:
            yield server
        finally:
            await server.stop()
    finally:
        await engine.close()
