"""The gateway's request loop: admission control, one task per request, a reply and an event per call.

Requests arrive by core NATS request/reply on the gateway queue group (no JetStream on the hot path). At most
`max_queue` requests wait or run at once; the next one is answered 'overloaded' at once, with a Retry-After
header that the client honors. Every call, served or not, emits an InferenceEvent (fire-and-forget publish).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from services.gateway.engine import Completion, Engine, EngineError
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.contracts import GATEWAY_QUEUE_GROUP, InferenceEvent, InferenceRequest, InferenceResponse, Subjects
from swarm.inference import OVERLOADED

log = logging.getLogger(__name__)

RETRY_AFTER_HEADER = "Retry-After"
RETRY_AFTER_MIN_S = 0.05
RETRY_AFTER_MAX_S = 30.0
SERVICE_TIME_SMOOTHING = 0.1  # weight of the newest call in the moving average of engine time
MAX_ERROR_CHARS = 1000
DRAIN_TIMEOUT_S = 30.0  # at stop, how long admitted requests may take to finish


def request_id_of(data: bytes) -> str:
    """The request_id of a payload that failed validation, if it has one, else ''."""
    try:
        body = json.loads(data)
    except ValueError:
        return ""
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def describe_validation_error(exc: ValidationError) -> str:
    """The first few problems of a validation error, on one line."""
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors()[:3]
    ]
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


class GatewayServer:
    """Serves InferenceRequests from one engine, with bounded admission."""

    def __init__(self, bus: Bus, engine: Engine, settings: GatewaySettings) -> None:
        self.bus = bus
        self.engine = engine
        self.max_queue = settings.max_queue
        self.models = {"default", engine.model}
        self.in_flight = 0
        self.served_count = 0
        self.rejected_count = 0
        self._service_ms = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None
        self._event_subject = Subjects.inference_event()

    async def start(self) -> None:
        """Join the gateway queue group."""
        self._subscription = await self.bus.nc.subscribe(
            Subjects.INFER, queue=GATEWAY_QUEUE_GROUP, cb=self._on_message
        )

    def health(self) -> dict[str, Any]:
        """What the health probe reports."""
        return {
            "backend": self.engine.name,
            "model": self.engine.model,
            "in_flight": self.in_flight,
            "max_queue": self.max_queue,
            "served_count": self.served_count,
            "rejected_count": self.rejected_count,
        }

    async def stop(self) -> None:
        """Leave the queue group, then let admitted requests finish and reply (cancelled past the drain timeout)."""
        if self._subscription is not None:
            await self._subscription.drain()  # type: ignore[no-untyped-call]  # nats-py is untyped here
            self._subscription = None
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(set(self._tasks), timeout=DRAIN_TIMEOUT_S)
        if stuck:
            # Replies went out before events; what is left waits on JetStream acks that are not coming.
            log.warning("stopping with %d requests unfinished after %.0fs", len(stuck), DRAIN_TIMEOUT_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    # ------------------------------------------------------------------ hot path

    async def _on_message(self, msg: Msg) -> None:
        # Runs in the subscription's single delivery loop: decide admission and hand off at once.
        received_at = time.perf_counter()
        if self.in_flight >= self.max_queue:
            task = asyncio.create_task(self._reject_overloaded(msg))
        else:
            self.in_flight += 1
            task = asyncio.create_task(self._serve(msg, received_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg, received_at: float) -> None:
        try:
            response, event = await self._answer(msg.data, received_at)
        finally:
            self.in_flight -= 1
        if msg.reply:
            await self.bus.nc.publish(msg.reply, response.model_dump_json().encode())
        await self.bus.publish_nowait(self._event_subject, event)

    async def _answer(self, data: bytes, received_at: float) -> tuple[InferenceResponse, InferenceEvent]:
        """The reply and the event for one admitted payload; never raises for a bad request or engine error."""
        try:
            request = InferenceRequest.model_validate_json(data)
        except ValidationError as exc:
            return self._failure(
                request_id_of(data), None, f"invalid request: {describe_validation_error(exc)}"
            )
        if request.model not in self.models:
            return self._failure(
                request.request_id,
                request,
                f"unknown model {request.model!r}: this gateway serves {self.engine.model!r}",
            )
        started_at = time.perf_counter()
        try:
            completion = await self.engine.generate(request)
        except EngineError as exc:
            return self._failure(request.request_id, request, str(exc)[:MAX_ERROR_CHARS])
        except Exception as exc:
            # The one place an engine failure becomes an error reply: the gateway keeps serving.
            log.exception("engine %s failed on request %s", self.engine.name, request.request_id)
            return self._failure(
                request.request_id, request, f"engine error: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            )
        return self._success(request, completion, received_at, started_at)

    def _success(
        self, request: InferenceRequest, completion: Completion, received_at: float, started_at: float
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
        )
        return response, event

    def _failure(
        self, request_id: str, request: InferenceRequest | None, error: str
    ) -> tuple[InferenceResponse, InferenceEvent]:
        engine = self.engine
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

    def retry_after_s(self) -> float:
        """When a rejected caller should try again: the time to work off the queue, roughly."""
        backlog_s = self._service_ms / 1000.0 * self.in_flight / max(1, self.engine.concurrency)
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, backlog_s))

    async def _reject_overloaded(self, msg: Msg) -> None:
        self.rejected_count += 1
        error = f"{OVERLOADED}: {self.in_flight} requests admitted (max_queue {self.max_queue})"
        response, event = self._failure(request_id_of(msg.data), None, error)
        if msg.reply:
            headers = {RETRY_AFTER_HEADER: f"{self.retry_after_s():.3f}"}
            await self.bus.nc.publish(msg.reply, response.model_dump_json().encode(), headers=headers)
        await self.bus.publish_nowait(self._event_subject, event)
