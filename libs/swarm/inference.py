"""The client side of the inference gateway: core NATS request/reply on the gateway's queue group."""

from __future__ import annotations

import asyncio
import random
import uuid

import nats.errors
from nats.aio.client import Client as NatsClient

from swarm.contracts import ChatMessage, InferenceRequest, InferenceResponse, Subjects

OVERLOADED = "overloaded"


class InferenceError(RuntimeError):
    """The gateway could not be reached, or kept answering 'overloaded' past the deadline."""


def new_request_id() -> str:
    """A unique id for one inference call."""
    return uuid.uuid4().hex


def chat(system: str, user: str) -> tuple[ChatMessage, ...]:
    """A two-message conversation."""
    return (ChatMessage(role="system", content=system), ChatMessage(role="user", content=user))


class InferenceClient:
    """Calls the gateway; backs off and retries while it is overloaded or absent, until the deadline."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc

    async def complete(self, request: InferenceRequest, timeout_s: float = 120.0) -> InferenceResponse:
        """One completion. A reply with ok=False (bad input, engine error) is returned, not raised."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        payload = request.model_dump_json().encode()
        backoff_s = 0.05
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise InferenceError(f"no completion within {timeout_s:.0f}s (gateway absent or overloaded)")
            try:
                msg = await self.nc.request(Subjects.INFER, payload, timeout=remaining)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                # No gateway yet (starting, restarting): wait and ask again.
                await asyncio.sleep(min(backoff_s, max(0.0, deadline - loop.time())))
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            response = InferenceResponse.model_validate_json(msg.data)
            if not response.ok and response.error and response.error.startswith(OVERLOADED):
                retry_after_s = float(msg.headers.get("Retry-After", backoff_s)) if msg.headers else backoff_s
                await asyncio.sleep(retry_after_s * (0.5 + random.random()))
                continue
            return response
