"""What the dispatcher publishes: steps to the pool's work queue, step events (buffered per run, sent in
batches), runs' progress, and the end of a run (its event: the recorder derives the run index from it).

Publishes do not wait for their acks; `flush` waits for all of them at once.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from pydantic import ValidationError

from services.dispatcher.live import HeldOutput, LiveRun
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.state import Dispatch, Outcome, RunPhase, RunState, StepPhase
from swarm.bus import Bus
from swarm.contracts import (
    ERROR_MAX_CHARS,
    INLINE_INPUTS_MAX_CHARS,
    MsgIds,
    RunCancelled,
    RunExecuted,
    RunFailed,
    RunPlanned,
    RunProgress,
    StepDispatch,
    StepEvent,
    StepEventBatch,
    StepEventKind,
    StepResult,
    Subjects,
    cut,
    step_event_id,
    utc_now,
)

log = logging.getLogger(__name__)

EVENTS_PER_BATCH = 500


def _event_batch(run_id: str, events: list[StepEvent | dict[str, object]]) -> StepEventBatch | None:
    """The events validated as one batch; an event that is not valid (a result's fields out of range) is
    dropped and logged, not its batch-mates."""
    try:
        return StepEventBatch.model_validate({"events": events})
    except ValidationError:
        kept = []
        for event in events:
            try:
                kept.append(StepEvent.model_validate(event))
            except ValidationError as exc:
                log.warning("run %s: a step event dropped: %s", run_id, str(exc)[:300])
        return StepEventBatch(events=tuple(kept)) if kept else None


class Outbox:
    """Publishes what runs' transitions produce; holds the step events until `flush`."""

    def __init__(self, bus: Bus, settings: DispatcherSettings) -> None:
        self.bus = bus
        self.progress_interval_s = settings.progress_interval_s
        self.steps_subject = Subjects.steps(settings.pool)
        self.tenant_steps_subjects = {tenant: Subjects.steps(pool) for tenant, pool in settings.tenant_pools.items()}
        # Per run, published together by `flush`: our own events as their fields, a worker's as it sent them.
        self._events: dict[str, list[StepEvent | dict[str, object]]] = {}
        # Runs whose transitions were published since the last `flush`: until it returns, their state in
        # memory may be ahead of what the streams hold.
        self.unflushed: dict[str, LiveRun] = {}

    @property
    def clean(self) -> bool:
        """Nothing published or buffered since the last `flush` that a checkpoint could depend on."""
        return not self.unflushed and not self._events

    async def emit(self, live: LiveRun, outcome: Outcome, result: StepResult | None = None) -> None:
        """Publish what a transition produced (without waiting; the caller flushes)."""
        run = live.state
        self.unflushed[live.run_id] = live
        for step_id in outcome.succeeded:  # held before any dependent is dispatched
            if result is not None and result.output is not None and run.children[step_id]:
                live.outputs[step_id] = HeldOutput(result.output, len(run.children[step_id]))
        await self.dispatch(live, outcome.dispatches)
        for parent, new_steps in outcome.spawned:
            self._event(run, parent, run.steps[parent].attempt, StepEventKind.SPAWNED,
                        attributes={"spawned": ",".join(new_steps)})  # fmt: skip
        live.unreported.update([*outcome.succeeded, *(step_id for step_id, _ in outcome.dead_lettered)])
        for step_id in outcome.succeeded:
            assert result is not None
            self._event(
                run, step_id, result.attempt, StepEventKind.SUCCEEDED,
                # A worker's clock may step back mid-attempt: a duration is never negative.
                duration_ms=max(0.0, (result.finished_at - result.started_at).total_seconds() * 1000),
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                worker_id=result.worker_id,
            )  # fmt: skip
        for step_id, next_attempt, error in outcome.retried:
            self._event(run, step_id, next_attempt - 1, StepEventKind.FAILED, error=error)
            self._event(run, step_id, next_attempt, StepEventKind.RETRIED, error=error)
        for step_id, error in outcome.dead_lettered:
            self._event(run, step_id, run.steps[step_id].attempt, StepEventKind.DEAD_LETTERED, error=error)
        for step_id in outcome.cancelled:
            self._event(run, step_id, run.steps[step_id].attempt, StepEventKind.CANCELLED)
        if outcome.run_finished is not None:
            await self.finish(run, outcome.run_finished)
        else:
            await self.progress(live)

    async def dispatch(self, live: LiveRun, dispatches: list[Dispatch]) -> None:
        """Publish steps to the pool's work queue (without waiting; the caller flushes)."""
        run = live.state
        self.unflushed[live.run_id] = live
        now = utc_now()
        for dispatch in dispatches:
            step = run.steps[dispatch.step_id].spec
            # Grown by a spawn: the worker reads the new inputs too.
            if run.depends_on[step.id] != step.depends_on:
                step = step.model_copy(update={"depends_on": run.depends_on[step.id]})
            memory, memory_omitted = run.memory_of(step.id)
            message = StepDispatch(
                run_id=run.run_id,
                tenant=run.tenant,
                goal=run.planned.goal,
                agent=run.agents[step.agent_id],
                step=step,
                attempt=dispatch.attempt,
                dispatched_at=now,
                not_before=now + timedelta(seconds=dispatch.delay_s) if dispatch.delay_s else None,
                missing_inputs=tuple(d for d in step.depends_on if run.steps[d].phase is StepPhase.FAILED),
                inputs=self._inline_inputs(live, step.depends_on, first_attempt=dispatch.attempt == 1),
                memory=memory,
                memory_omitted=memory_omitted,
                spawn_budget=run.spawn_budget() if "spawn" in step.tools else None,
            )
            msg_id = MsgIds.step_dispatch(run.run_id, step.id, dispatch.attempt)
            subject = self.tenant_steps_subjects.get(run.tenant, self.steps_subject)
            await self.bus.publish_nowait(subject, message, msg_id=msg_id)
            live.queued_at[(step.id, dispatch.attempt)] = time.monotonic() + dispatch.delay_s
            # depends_on lets the event log rebuild the DAG (critical path) without the plan.
            attributes = {"depends_on": ",".join(run.depends_on[step.id])}
            if step.id in run.spawned_by:  # the recorder's spawned_by column
                attributes["spawned_by"] = run.spawned_by[step.id]
            self._event(run, step.id, dispatch.attempt, StepEventKind.QUEUED, attributes=attributes)

    @staticmethod
    def _inline_inputs(live: LiveRun, depends_on: tuple[str, ...], first_attempt: bool) -> dict[str, str]:
        """The dependencies' outputs we hold, within the message budget; an output is let go once every
        dependent got its first dispatch (retries, and a run taken over from a checkpoint, read the
        bucket)."""
        held = live.outputs
        if not held:
            return {}
        inputs: dict[str, str] = {}
        budget = INLINE_INPUTS_MAX_CHARS
        for dep in depends_on:
            output = held.get(dep)
            if output is None:
                continue
            if len(output.text) <= budget:
                inputs[dep] = output.text
                budget -= len(output.text)
            if first_attempt:
                output.dependents_left -= 1
                if output.dependents_left <= 0:
                    del held[dep]
        return inputs

    def _event(
        self, run: RunState, step_id: str, attempt: int, kind: StepEventKind, **fields: object
    ) -> None:
        """Buffer a step event's fields; `flush` validates and publishes each run's buffer as StepEventBatches
        (one validation per batch costs a third of one per event)."""
        if "error" in fields:  # a spawn's or a step's error, which may be long
            fields["error"] = cut(str(fields["error"]), ERROR_MAX_CHARS)
        event = {
            "event_id": step_event_id(run.run_id, step_id, attempt, kind),
            "run_id": run.run_id,
            "tenant": run.tenant,
            "step_id": step_id,
            "agent_id": run.steps[step_id].spec.agent_id,
            "attempt": attempt,
            "kind": kind,
            "at": utc_now(),
            **fields,
        }
        self._events.setdefault(run.run_id, []).append(event)

    def add_events(self, run_id: str, events: list[StepEvent]) -> None:
        """Buffer step events written elsewhere (a worker's, checked by the caller)."""
        self._events.setdefault(run_id, []).extend(events)

    def drop_events(self, run_id: str) -> None:
        """Forget a run's events (its state was rewound: re-applying its results makes them anew)."""
        self._events.pop(run_id, None)

    async def flush(self) -> None:
        """Publish buffered events, then wait until the streams acknowledged everything published.

        Callers go through `LiveRuns.flush`, which rewinds the runs whose publishes were lost.
        """
        events, self._events = self._events, {}
        self.unflushed = {}
        for run_id, run_events in events.items():
            for i in range(0, len(run_events), EVENTS_PER_BATCH):
                batch = _event_batch(run_id, run_events[i : i + EVENTS_PER_BATCH])
                if batch is not None:  # a run's events are all of its tenant (results are checked for it)
                    await self.bus.publish_nowait(Subjects.step_event_batch(batch.events[0].tenant, run_id), batch)
        await self.bus.flush_publishes()

    async def progress(self, live: LiveRun) -> None:
        """The run's counts, at most once per progress interval."""
        now = time.monotonic()
        if now - live.progress_at < self.progress_interval_s:
            return
        live.progress_at = now
        run = live.state
        unreported, live.unreported = live.unreported, set()
        progress = RunProgress(
            run_id=run.run_id,
            tenant=run.tenant,
            steps_total=len(run.steps),
            steps_queued=run.in_flight,
            steps_succeeded=run.count(StepPhase.SUCCEEDED),
            steps_failed=run.count(StepPhase.FAILED),
            retries_count=run.retries_count,
            finished_step_ids=tuple(sorted(unreported)),
        )
        await self.bus.publish_nowait(Subjects.run_event(run.tenant, run.run_id, progress.kind), progress)

    async def finish(self, run: RunState, phase: RunPhase) -> None:
        """The run's end: executed (the aggregator takes it from there), failed or cancelled."""
        summary = run.summary()
        message: RunExecuted | RunFailed | RunCancelled
        # A run's error may quote a step's whole error: the events and the record hold the first characters.
        error = cut(run.error, ERROR_MAX_CHARS)
        if phase is RunPhase.EXECUTED:
            message = RunExecuted(
                run_id=run.run_id, tenant=run.tenant, goal=run.planned.goal,
                sink_step_ids=tuple(run.sink_step_ids()), summary=summary, submitted_at=run.submitted_at,
                missing_agents=tuple(run.missing_agents()),
            )  # fmt: skip
        elif phase is RunPhase.FAILED:
            message = RunFailed(
                run_id=run.run_id, tenant=run.tenant, error=error,
                failed_step_ids=tuple(run.failed_step_ids()), summary=summary,
                missing_agents=tuple(run.missing_agents()),
            )  # fmt: skip
        else:
            message = RunCancelled(run_id=run.run_id, tenant=run.tenant, reason=error)
        subject = Subjects.run_event(run.tenant, run.run_id, message.kind)
        await self.bus.publish_nowait(subject, message, MsgIds.run_event(run.run_id, message.kind))
        log.info("run %s %s: %s", run.run_id, phase.value, summary.model_dump(exclude={"v"}))

    async def refuse(self, planned: RunPlanned, error: str) -> None:
        """End a run whose plan cannot run: its followers see why instead of waiting forever."""
        error = cut(error, ERROR_MAX_CHARS)
        failed = RunFailed(run_id=planned.run_id, tenant=planned.tenant, error=error)
        subject = Subjects.run_event(planned.tenant, planned.run_id, failed.kind)
        await self.bus.publish(subject, failed, MsgIds.run_event(planned.run_id, failed.kind))
