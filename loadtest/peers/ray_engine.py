"""Ray's side: async actors run the steps, each an asyncio.sleep of its latency, dependencies as object refs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import ray

from loadtest.peers.plan import PeerStep

ACTORS = 4
MAX_CONCURRENCY = 100


@ray.remote
class StepActor:
    """Runs steps concurrently (an async actor): Ray resolves a step's input refs before it starts."""

    async def step(self, step_id: str, latency_s: float, *inputs: str) -> str:
        """Sleep for the step's latency; the step's id is its result."""
        await asyncio.sleep(latency_s)
        return step_id

    async def ready(self) -> bool:
        """Answers once the actor runs."""
        return True


class RayEngine:
    """A local Ray instance and its actors, for several runs; `close` shuts Ray down."""

    def __init__(self, actors: int = ACTORS, max_concurrency: int = MAX_CONCURRENCY) -> None:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        self.actors = [StepActor.options(max_concurrency=max_concurrency).remote() for _ in range(actors)]  # type: ignore[attr-defined]
        ray.get([actor.ready.remote() for actor in self.actors])

    def run(self, steps: Sequence[PeerStep]) -> tuple[list[str], float]:
        """Submit every step (its dependencies as object refs) and wait for all; the results and the makespan."""
        refs: dict[str, Any] = {}
        started = time.perf_counter()
        for step in steps:
            inputs = [refs[dep] for dep in step.depends_on]
            refs[step.step_id] = self.actors[step.actor].step.remote(step.step_id, step.latency_s, *inputs)
        completed: list[str] = ray.get(list(refs.values()))
        return completed, time.perf_counter() - started

    def close(self) -> None:
        """Shut the local Ray instance down (its raylet and workers)."""
        ray.shutdown()
