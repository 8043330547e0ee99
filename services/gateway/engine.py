"""The one engine interface every backend implements, and the factory that picks a backend."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from swarm.contracts import InferenceRequest

CHARS_PER_TOKEN = 4


class EngineError(Exception):
    """The request cannot be served as asked (prompt too long, unsatisfiable schema, unparsable output).

    Its message is returned to the caller as is; anything else an engine raises is a bug or an outage.
    """


@dataclass(frozen=True, slots=True)
class Completion:
    """What an engine produced for one request."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float = 0.0  # time spent waiting for a free engine slot, inside `generate`
    first_token_at: float | None = None  # time.perf_counter() when the engine produced the first token


# What `generate_stream` yields: text deltas as they are generated, then one Completion (the whole text).
StreamItem = str | Completion


class Engine(Protocol):
    """An inference engine: backends differ, the gateway does not."""

    name: str  # the backend, e.g. 'sim'
    model: str  # the model it serves
    concurrency: int  # generations it runs at once (the gateway's slots, and the Retry-After estimate)

    async def generate(self, request: InferenceRequest) -> Completion:
        """One completion; raises EngineError when the request cannot be served."""
        ...

    def generate_stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]:
        """Text deltas as they are generated, then the Completion; raises EngineError like `generate`.

        An async generator: the gateway closes it (`aclose`) when it stops reading early, and cancels it on a
        deadline, so a backend can stop generating for a caller that is gone.
        """
        ...

    async def close(self) -> None:
        """Release models, threads and memory."""
        ...


async def collect(items: AsyncIterator[StreamItem]) -> Completion:
    """A whole Completion from a stream, with the time its first token came: how a backend whose engine
    streams answers a whole request and still knows its time to first token."""
    first_token_at: float | None = None
    async with contextlib.aclosing(items):  # closed on cancel too: the engine stops generating
        async for item in items:
            if isinstance(item, Completion):
                return dataclasses.replace(item, first_token_at=first_token_at)
            if item and first_token_at is None:
                first_token_at = time.perf_counter()
    raise RuntimeError("the engine ended a stream without its completion")


def estimate_tokens(text: str) -> int:
    """A token count for engines without a tokenizer (~4 characters per token)."""
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN) if text else 0


def parse_json_output(content: str, finish_reason: str | None, max_tokens: int) -> str:
    """The model's JSON, re-serialized strictly; EngineError when it does not parse even leniently."""
    try:
        document = json.loads(content, strict=False)  # strict=False: tolerate raw control characters
    except json.JSONDecodeError as exc:
        hint = f" (stopped by max_tokens={max_tokens})" if finish_reason == "length" else ""
        raise EngineError(f"the model's output is not valid JSON{hint}: {exc}") from exc
    return json.dumps(document, ensure_ascii=False)

