"""An attempt with no result long after its dispatch fails (and is retried)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors

from services.dispatcher.live import LiveRun, LiveRuns
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.state import StepPhase
from swarm.contracts import StepResult, StepStatus, utc_now

log = logging.getLogger(__name__)


class LostStepSweeper:
    """Fails attempts that got no result long after their dispatch, so they are retried or dead-lettered.

    A step message can be lost in a crash (a nats-server killed before flushing, a worker dying past
    max_deliver); this makes every accepted step end succeeded, failed or cancelled.
    """

    def __init__(self, runs: LiveRuns, settings: DispatcherSettings, instance_id: str) -> None:
        self.runs = runs
        self.settings = settings
        self.worker_id = f"dispatcher:{instance_id}"  # the results it writes say who wrote them

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every interval until `stop`."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_s)
            try:
                async with self.runs.lock:
                    await self._sweep()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("lost-step sweep failed: %s", exc)

    async def _sweep(self) -> None:
        now = time.monotonic()
        touched: dict[str, LiveRun] = {}
        for live in self.runs.held():
            run = live.state
            seen: dict[tuple[str, int], float] = {}
            for step_id, state in run.steps.items():
                if state.phase is not StepPhase.QUEUED:
                    continue
                key = (step_id, state.attempt)
                since = seen[key] = live.queued_at.get(key, now)
                waited_s = now - since
                if waited_s < state.spec.timeout_s * 2 + self.settings.lost_step_grace_s:
                    continue
                log.warning("run %s step %s attempt %d: no result after %.0fs",
                            run.run_id, step_id, state.attempt, waited_s)  # fmt: skip
                result = StepResult(
                    run_id=run.run_id, step_id=step_id, attempt=state.attempt, status=StepStatus.FAILED,
                    error=f"no result {waited_s:.0f}s after dispatch (step lost)", started_at=utc_now(),
                    finished_at=utc_now(), worker_id=self.worker_id,
                )  # fmt: skip
                outcome = run.apply(result)
                await self.runs.outbox.emit(live, outcome, result)
                touched[run.run_id] = live
            # Kept: the queued attempts seen now, and dispatches delayed into the future.
            live.queued_at = {k: v for k, v in {**live.queued_at, **seen}.items() if k in seen or v > now}
        if touched:
            touched.update({live.run_id: live for live in await self.runs.schedule()})
            await self.runs.flush()
            for live in touched.values():
                await self.runs.checkpoint(live)
