"""The client side of the inference gateway: core NATS request/reply on the gateway's queue group.

Whole replies: one request, one InferenceResponse. Streams: the client subscribes to a unique inbox, then
publishes the request (stream=true) with that inbox as its reply subject; the gateway sends InferenceChunk
messages there, the last one (done=true) carrying the InferenceResponse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from swarm.bus import ReplyInbox, wait_future
from swarm.contracts import (
    ChatMessage,
    InferenceCancel,
    InferenceChunk,
    InferenceRequest,
    InferenceResponse,
    Subjects,
)

OVERLOADED = "overloaded"
DEADLINE_EXCEEDED = "deadline exceeded"
RETRY_AFTER_HEADER = "Retry-After"
NO_RESPONDERS_STATUS = "503"
MAX_BACKOFF_S = 2.0


class Reconnected(Exception):
    """The NATS connection was re-established while a request waited for its reply."""


class InferenceError(RuntimeError):
    """The gateway could not be reached, or kept answering 'overloaded' past the deadline."""


_REQUEST_IDS = itertools.count()
_PROCESS_TAG = uuid.uuid4().hex[:12]


def new_request_id() -> str:
    """A unique id for one inference call: this process's random tag and a counter (no syscall per call)."""
    return f"{_PROCESS_TAG}-{next(_REQUEST_IDS)}"


def chat(system: str, user: str) -> tuple[ChatMessage, ...]:
    """A two-message conversation."""
    return (ChatMessage(role="system", content=system), ChatMessage(role="user", content=user))


def is_overloaded(response: InferenceResponse) -> bool:
    """Whether the gateway turned the request away for now (retry after a while)."""
    return not response.ok and bool(response.error) and str(response.error).startswith(OVERLOADED)


def retry_after_s(msg: Msg, default_s: float) -> float:
    """The gateway's Retry-After hint, with jitter so that rejected callers do not come back together."""
    hint = float(msg.headers.get(RETRY_AFTER_HEADER, default_s)) if msg.headers else default_s
    return hint * (0.5 + random.random())


def _resolve_with_msg(msg: Msg, future: asyncio.Future[Msg]) -> None:
    future.set_result(msg)


class InferenceClient:
    """Calls the gateway; backs off and retries while it is overloaded or absent, until the deadline.

    Unless the request sets its own `deadline_ms`, each attempt carries the time left of `timeout_s`, so
    that the gateway drops work nobody waits for any more.
    """

    def __init__(self, nc: NatsClient, reconnected: Callable[[], Awaitable[None]] | None = None) -> None:
        self.nc = nc
        self.replies = ReplyInbox(nc, _resolve_with_msg)
        # Returns when the connection is next re-established (Bus.wait_reconnected): requests in
        # flight across a NATS restart are sent again instead of waiting out their whole timeout.
        self.reconnected = reconnected
        self._reconnect_watch: asyncio.Task[None] | None = None

    async def _fail_waiting_on_reconnect(self) -> None:
        assert self.reconnected is not None
        while True:
            await self.reconnected()
            self.replies.fail_all(Reconnected())

    def _payload(self, request: InferenceRequest, remaining_s: float, stream: bool) -> bytes:
        update: dict[str, object] = {}
        if request.deadline_ms is None:
            update["deadline_ms"] = remaining_s * 1000.0
        if request.stream != stream:
            update["stream"] = stream
        return (request.model_copy(update=update) if update else request).model_dump_json().encode()

    async def _request(self, payload: bytes, timeout_s: float) -> Msg:
        """A core request; raises Reconnected when the connection was re-established meanwhile."""
        if self.reconnected is not None and self._reconnect_watch is None:
            self._reconnect_watch = asyncio.create_task(self._fail_waiting_on_reconnect())
        reply, token, future = await self.replies.expect()
        await self.nc.publish(Subjects.INFER, payload, reply=reply)
        try:
            msg: Msg = await wait_future(future, timeout_s)
        except TimeoutError:
            self.replies.forget(token)
            raise nats.errors.TimeoutError from None
        if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
            raise nats.errors.NoRespondersError
        return msg

    async def abort(self, request_id: str) -> None:
        """Tell every gateway to stop a call nobody waits for any more (it frees the engine's slot)."""
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(Subjects.INFER_CANCEL, InferenceCancel(request_id=request_id).model_dump_json().encode())

    async def complete(self, request: InferenceRequest, timeout_s: float = 120.0) -> InferenceResponse:
        """One completion. A reply with ok=False (bad input, engine error) is returned, not raised.

        Cancelled while it waits (its step was cancelled, its caller stops), it tells the gateway to stop the call.
        """
        try:
            return await self._complete(request, timeout_s)
        except asyncio.CancelledError:
            await self.abort(request.request_id)
            raise

    async def _complete(self, request: InferenceRequest, timeout_s: float) -> InferenceResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        backoff_s = 0.05
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise InferenceError(f"no completion within {timeout_s:.0f}s (gateway absent or overloaded)")
            try:
                msg = await self._request(self._payload(request, remaining, stream=False), remaining)
            except Reconnected:
                continue  # the request or its reply may have been lost with the connection: ask again
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                # No gateway yet (starting, restarting): wait and ask again.
                await asyncio.sleep(min(backoff_s, max(0.0, deadline - loop.time())))
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                continue
            response = InferenceResponse.model_validate_json(msg.data)
            if is_overloaded(response):
                await asyncio.sleep(retry_after_s(msg, backoff_s))
                continue
            return response

    async def stream(
        self, request: InferenceRequest, timeout_s: float = 120.0
    ) -> AsyncIterator[str | InferenceResponse]:
        """Text deltas as the gateway generates them, then the InferenceResponse (also when not ok).

        Retries like `complete` until the first chunk arrives; a stream that stalls after that raises.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        backoff_s = 0.05
        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(inbox)
        answered = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise InferenceError(f"no completion within {timeout_s:.0f}s (gateway absent or overloaded)")
                await self.nc.publish(Subjects.INFER, self._payload(request, remaining, stream=True), reply=inbox)
                expected = 0
                while True:
                    try:
                        msg = await subscription.next_msg(timeout=max(0.001, deadline - loop.time()))
                    except nats.errors.TimeoutError:
                        raise InferenceError(
                            f"stream of {request.request_id} incomplete after {timeout_s:.0f}s "
                            f"({expected} chunks received)"
                        ) from None
                    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
                        await asyncio.sleep(min(backoff_s, max(0.0, deadline - loop.time())))
                        backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                        break  # no gateway yet: ask again
                    chunk = InferenceChunk.model_validate_json(msg.data)
                    if chunk.index != expected:
                        raise InferenceError(
                            f"stream of {request.request_id}: chunk {chunk.index} arrived, {expected} expected"
                        )
                    expected += 1
                    if chunk.delta:
                        yield chunk.delta
                    if not chunk.done:
                        continue
                    response = chunk.response or InferenceResponse(
                        request_id=request.request_id, ok=False, error="stream ended without a reply"
                    )
                    if chunk.index == 0 and is_overloaded(response):
                        await asyncio.sleep(retry_after_s(msg, backoff_s))
                        break
                    answered = True
                    yield response
                    return
        except (asyncio.CancelledError, GeneratorExit):
            if not answered:  # the reader went away mid-stream: the gateway stops generating
                await self.abort(request.request_id)
            raise
        finally:
            await subscription.unsubscribe()
