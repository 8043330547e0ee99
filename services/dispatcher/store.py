"""Runs in the run-state KV bucket: checkpoints (compare-and-set), loading a run back, running markers."""

from __future__ import annotations

import contextlib
import json
import logging

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from services.dispatcher.live import LiveRun
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.state import RetryPolicy, RunPhase, RunState, StepPhase
from swarm.bus import Bus
from swarm.contracts import RUN_STATE_BUCKET, RUNS, Keys, RunEventKind, RunPlanned, Subjects
from swarm.dag import PlanLimits
from swarm.payloads import PlanStore

log = logging.getLogger(__name__)

FINISHED_RUNS_KEPT = 100_000


class RunStore:
    """Checkpoints runs and reads them back; remembers which runs are over."""

    def __init__(self, bus: Bus, settings: DispatcherSettings) -> None:
        self.bus = bus
        self.plans = PlanStore(bus.js)  # plans by reference, read once per run and cached
        self.max_in_flight_per_run = settings.max_in_flight_per_run
        self.retry = RetryPolicy(base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
        self.limits = PlanLimits(max_agents=settings.max_agents, max_steps=settings.max_steps)
        self._over: dict[str, None] = {}  # runs known to be over (insertion-ordered, bounded: see mark_over)

    def new(self, planned: RunPlanned) -> LiveRun:
        """A run from its (resolved) plan, not started; raises `PlanError` for a plan that cannot run."""
        return LiveRun(RunState(planned, self.max_in_flight_per_run, self.retry, self.limits))

    async def mark_running(self, run_id: str) -> None:
        """Say the run is under way: a new owner of its partition adopts it."""
        await (await self.bus.kv(RUN_STATE_BUCKET)).put(Keys.running_marker(run_id), b"")

    async def running_in(self, partition: int) -> list[str]:
        """The runs under way whose results come on `partition`, by their markers (not every checkpoint)."""
        markers = await self.bus.kv_keys(RUN_STATE_BUCKET, Keys.running_markers(partition))
        return [marker.rsplit(".", 1)[-1] for marker in markers]

    async def save(self, live: LiveRun) -> bool:
        """Write the run's checkpoint if nobody else wrote one since we read or wrote ours (compare-and-set).

        False when another replica wrote one since.
        """
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        run = live.state
        body = run.checkpoint_json(run.tenant)
        try:
            if live.revision is None:
                live.revision = await kv.create(Keys.run_checkpoint(run.run_id), body)
            else:
                live.revision = await kv.update(Keys.run_checkpoint(run.run_id), body, last=live.revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def load(self, run_id: str) -> LiveRun | None:
        """A run under way, from its checkpoint and its planned event; None if it has none or is over."""
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        try:
            entry = await kv.get(Keys.run_checkpoint(run_id))
        except KeyNotFoundError:
            return None
        checkpoint = json.loads(entry.value or b"{}")
        if checkpoint.get("phase") != RunPhase.RUNNING.value:
            await self.mark_over(run_id)
            return None
        try:
            subject = Subjects.run_event(checkpoint["tenant"], run_id, RunEventKind.PLANNED)
            raw = await self.bus.js.get_last_msg(RUNS.name, subject)
        except NotFoundError:
            log.warning("run %s has a checkpoint but no planned event yet", run_id)
            return None
        planned = await self.plans.resolved(RunPlanned.model_validate_json(raw.data or b""))
        run = RunState.restore(planned, checkpoint, self.max_in_flight_per_run, self.retry, self.limits)
        # What the previous owner finished but had not reported is lost with it: report every finished step.
        finished = (StepPhase.SUCCEEDED, StepPhase.FAILED)
        unreported = {step_id for step_id, step in run.steps.items() if step.phase in finished}
        log.info("run %s loaded from its checkpoint", run_id)
        return LiveRun(run, revision=entry.revision or 0, unreported=unreported)

    def is_over(self, run_id: str) -> bool:
        """Known to be over (a bounded memory: an evicted run is re-read from its checkpoint)."""
        return run_id in self._over

    async def mark_over(self, run_id: str) -> None:
        """Remember that the run is over and drop its running marker."""
        self._over[run_id] = None
        if len(self._over) > FINISHED_RUNS_KEPT:
            del self._over[next(iter(self._over))]
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        # A marker left behind is dropped at the next adoption (which finds its run over).
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await kv.delete(Keys.running_marker(run_id))
