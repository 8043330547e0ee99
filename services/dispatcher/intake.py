"""Plans and cancellations from RUNS: a planned run starts, a cancel request cancels its run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.msg import Msg

from services.dispatcher.live import LiveRun, LiveRuns
from swarm.bus import Reject, Retry
from swarm.contracts import RunCancelRequested, RunEventKind, RunPlanned, Subjects
from swarm.dag import PlanError
from swarm.payloads import PlanUnavailable

log = logging.getLogger(__name__)

PLAN_HANDOFF_DELAY_S = 0.05  # a plan of a partition we do not own goes back to the queue for its owner


class Intake:
    """Starts the runs of the results partitions this replica owns, and cancels runs."""

    def __init__(self, runs: LiveRuns, owns: Callable[[str], bool]) -> None:
        self.runs = runs
        self.owns = owns  # whether the run's results partition is ours

    async def on_run_message(self, msg: Msg) -> None:
        """A planned run starts; a cancel request cancels. Handled under `settle`'s ack policy."""
        kind = msg.subject.rsplit(".", 1)[-1]
        async with self.runs.lock:
            if kind == RunEventKind.PLANNED:
                planned = RunPlanned.model_validate_json(msg.data)
                if not self.owns(planned.run_id):
                    # The owner of its results partition starts it: the replica that dispatches a run's steps
                    # is the one that counts them against its share of the caps (see scheduling.py).
                    raise Retry(
                        f"run {planned.run_id} is another replica's to start", delay_s=PLAN_HANDOFF_DELAY_S
                    )
                await self._start(planned)
            elif kind == RunEventKind.CANCEL:
                request = RunCancelRequested.model_validate_json(msg.data)
                # NATS permissions guard the subject, not the body: a tenant may only cancel its own runs.
                if msg.subject != Subjects.run_event(request.tenant, request.run_id, request.kind):
                    raise Reject(f"cancel request on {msg.subject} names another run or tenant")
                await self._cancel(request)

    async def _start(self, planned: RunPlanned) -> None:
        runs, store = self.runs, self.runs.store
        if runs.known(planned.run_id):
            return
        # The plan is read while the run's checkpoint is looked up: both are on the way to its first step.
        found = await asyncio.gather(runs.load(planned.run_id), store.plans.resolved(planned), return_exceptions=True)
        loaded: LiveRun | BaseException | None = found[0]
        resolved: RunPlanned | BaseException = found[1]
        if isinstance(loaded, BaseException):
            raise loaded
        if loaded is not None or store.is_over(planned.run_id):
            return  # a redelivered plan: the run is under way or over (an old run's plan may be gone: no matter)
        if isinstance(resolved, PlanUnavailable):
            await runs.outbox.refuse(planned, f"plan unavailable: {resolved}")
            raise Reject(f"run {planned.run_id}: {resolved}") from resolved
        if isinstance(resolved, BaseException):
            raise resolved
        try:
            live = store.new(resolved)
        except PlanError as exc:
            await runs.outbox.refuse(planned, f"invalid plan: {exc}")
            raise Reject(f"run {planned.run_id}: invalid plan: {exc}") from exc
        run = live.state
        runs.add(live)
        marking = asyncio.ensure_future(store.mark_running(run.run_id))  # beside the first dispatches
        try:
            run.start()
            await runs.schedule()
        finally:
            await marking  # before its checkpoint
        await runs.flush()
        await runs.checkpoint(live)
        log.info("run %s started: %d agents, %d steps", run.run_id, len(run.agents), len(run.steps))
        if not self.owns(run.run_id):  # its partition's owner takes it from the checkpoint
            runs.forget(run.run_id)

    async def _cancel(self, request: RunCancelRequested) -> None:
        live = await self.runs.get_or_load(request.run_id)
        if live is None or live.state.tenant != request.tenant:
            return
        outcome = live.state.cancel(request.reason)
        await self.runs.outbox.emit(live, outcome)
        await self.runs.schedule()
        await self.runs.flush()
        await self.runs.checkpoint(live)
