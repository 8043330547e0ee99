"""The one engine interface every backend implements, and the factory that picks a backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.gateway.settings import GatewaySettings
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


class Engine(Protocol):
    """An inference engine: backends differ, the gateway does not."""

    name: str  # the backend, e.g. 'sim'
    model: str  # the model it serves
    concurrency: int  # generations it runs at once (for the Retry-After estimate)

    async def generate(self, request: InferenceRequest) -> Completion:
        """One completion; raises EngineError when the request cannot be served."""
        ...

    async def close(self) -> None:
        """Release models, threads and memory."""
        ...


def estimate_tokens(text: str) -> int:
    """A token count for engines without a tokenizer (~4 characters per token)."""
    return max(1, (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN) if text else 0


def create_engine(settings: GatewaySettings) -> Engine:
    """The backend the settings name; each is imported here so that its dependencies stay optional."""
    if settings.backend == "sim":
        from services.gateway.backends.sim import SimEngine

        return SimEngine(settings)
    if settings.backend == "llamacpp":
        from services.gateway.backends.llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings)
    raise ValueError(f"unknown gateway backend {settings.backend!r}")
