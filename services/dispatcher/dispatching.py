"""The dispatcher's I/O: plans and results in, ready steps, step events and run events out, state checkpointed.

Ordering per batch of results: apply → publish (steps, events) → wait for the streams' acks →
checkpoint → ack the results. A crash anywhere in between replays results onto the last checkpoint;
re-published steps carry the same message id and are de-duplicated by the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import timedelta

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from services.dispatcher.leases import LeaseChanges, PartitionLeases
from services.dispatcher.scheduling import Scheduler
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.state import Dispatch, Outcome, RetryPolicy, RunPhase, RunState, StepPhase
from swarm.bus import Bus, ConsumerSpec, PublishNotAcknowledged, Reject, Retry, consume_batches, fail
from swarm.contracts import (
    DISPATCHER_LEASES_BUCKET,
    DISPATCHER_PLANS_CONSUMER,
    DISPATCHER_RESULTS_CONSUMER,
    INLINE_INPUTS_MAX_CHARS,
    RESULTS,
    RUN_INDEX_BUCKET,
    RUN_STATE_BUCKET,
    RUNS,
    RunCancelled,
    RunCancelRequested,
    RunExecuted,
    RunFailed,
    RunPlanned,
    RunProgress,
    RunRecord,
    RunStatus,
    StepDispatch,
    StepEvent,
    StepEventBatch,
    StepEventKind,
    StepResult,
    StepStatus,
    Subjects,
    is_step_event_id,
    result_partition,
    step_event_id,
    utc_now,
)
from swarm.dag import PlanError, PlanLimits
from swarm.payloads import PlanStore, PlanUnavailable

log = logging.getLogger(__name__)

PLANS_CONSUMER = ConsumerSpec(
    stream=RUNS,
    durable=DISPATCHER_PLANS_CONSUMER,
    filter_subjects=(Subjects.run_kind_all("planned"), Subjects.run_kind_all("cancel")),
    ack_wait_s=60.0,
)
EVENTS_PER_BATCH = 500
PLAN_HANDOFF_DELAY_S = 0.05  # a plan of a partition we do not own goes back to the queue for its owner
FINISHED_RUNS_KEPT = 100_000
RUNNING_MARKER_PREFIX = "running"
LEASE_RENEW_S = DISPATCHER_LEASES_BUCKET.ttl_s / 3
# What a worker may report about its own attempt; the dispatcher writes the rest of a step's history.
WORKER_EVENT_KINDS = frozenset({StepEventKind.STARTED, StepEventKind.TOOL_CALL, StepEventKind.INFERENCE_DONE})


@dataclass
class HeldOutput:
    """A step's output, kept for its dependents' dispatches."""

    text: str
    dependents_left: int


async def _settle_quietly(settling: Awaitable[None]) -> None:
    """Ack or nak, where a message settled already (isolated after a failed batch) or a lost ack is harmless."""
    with contextlib.suppress(nats.errors.Error):
        await settling


def running_marker(run_id: str) -> str:
    """The run-state key that says a run is under way, grouped by results partition for `_adopt`."""
    return f"{RUNNING_MARKER_PREFIX}.p{result_partition(run_id)}.{run_id}"


def results_consumer(partition: int) -> ConsumerSpec:
    """The durable consumer of one results partition (read by the replica that owns it)."""
    return ConsumerSpec(
        stream=RESULTS,
        durable=f"{DISPATCHER_RESULTS_CONSUMER}-{partition}",
        filter_subjects=(Subjects.results_partition(partition),),
        ack_wait_s=10.0,  # results are acked within a checkpoint interval: a crashed replica's come back soon
    )


class Dispatcher:
    """Owns the runs in memory; the KV checkpoints make any replica able to take them over."""

    def __init__(self, bus: Bus, settings: DispatcherSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.retry = RetryPolicy(base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
        self.limits = PlanLimits(max_agents=settings.max_agents, max_steps=settings.max_steps)
        self.scheduler = Scheduler(settings.max_in_flight, settings.max_in_flight_per_tenant, settings.tenant_weights)
        self.plans = PlanStore(bus.js)  # plans by reference, read once per run and cached
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.runs: dict[str, RunState] = {}
        self.revisions: dict[str, int] = {}  # run -> revision of its checkpoint we last wrote or read
        self.finished: dict[str, None] = {}  # runs known to be over (insertion-ordered, bounded: see _finished)
        self.leases: PartitionLeases | None = None
        self._loops: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._to_adopt: set[int] = set()  # owned partitions whose running runs are not loaded yet
        self._last_progress: dict[str, float] = {}
        self._finished_unreported: dict[str, set[str]] = {}  # run -> steps finished since its last progress event
        self._queued_at: dict[tuple[str, str, int], float] = {}
        self._events: dict[str, list[StepEvent]] = {}  # per run, published together by _flush
        self._unacked: dict[str, list[Msg]] = {}  # results applied, waiting for the checkpoint that covers them
        self._checkpointed_at: dict[str, float] = {}  # (run, step, attempt) -> monotonic time
        self._outputs: dict[str, dict[str, HeldOutput]] = {}  # run -> step -> output its dependents get inline
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ plans and cancellations

    async def on_run_message(self, msg: Msg) -> None:
        """A planned run starts; a cancel request cancels. Handled under `settle`'s ack policy."""
        kind = msg.subject.rsplit(".", 1)[-1]
        async with self._lock:
            if kind == "planned":
                planned = RunPlanned.model_validate_json(msg.data)
                if not self._owns(planned.run_id):
                    # The owner of its results partition starts it: the replica that dispatches a run's steps
                    # is the one that counts them against its share of the caps (see scheduling.py).
                    raise Retry(f"run {planned.run_id} is another replica's to start", delay_s=PLAN_HANDOFF_DELAY_S)
                await self._start(planned)
            elif kind == "cancel":
                request = RunCancelRequested.model_validate_json(msg.data)
                # NATS permissions guard the subject, not the body: a tenant may only cancel its own runs.
                if msg.subject != Subjects.run_event(request.tenant, request.run_id, "cancel"):
                    raise Reject(f"cancel request on {msg.subject} names another run or tenant")
                await self._cancel(request)

    async def _start(self, planned: RunPlanned) -> None:
        if planned.run_id in self.runs or planned.run_id in self.finished:
            return
        if await self._load(planned.run_id) is not None or planned.run_id in self.finished:
            return  # a redelivered plan: the run is under way or over
        try:
            planned = await self.plans.resolved(planned)  # after the checks: an old run's plan may be gone
        except PlanUnavailable as exc:
            await self._refuse(planned, f"plan unavailable: {exc}")
            raise Reject(f"run {planned.run_id}: {exc}") from exc
        try:
            run = RunState(planned, self.settings.max_in_flight_per_run, self.retry, self.limits)
        except PlanError as exc:
            await self._refuse(planned, f"invalid plan: {exc}")
            raise Reject(f"run {planned.run_id}: invalid plan: {exc}") from exc
        self.runs[run.run_id] = run
        await (await self.bus.kv(RUN_STATE_BUCKET)).put(running_marker(run.run_id), b"")  # before its checkpoint
        run.start()
        await self._schedule()
        await self._flush()
        await self._checkpoint(run)
        log.info("run %s started: %d agents, %d steps", run.run_id, len(run.agents), len(run.steps))
        if not self._owns(run.run_id):  # its partition's owner takes it from the checkpoint
            self._forget(run.run_id)

    async def _refuse(self, planned: RunPlanned, error: str) -> None:
        """End a run whose plan cannot run: its followers see why instead of waiting forever."""
        failed = RunFailed(run_id=planned.run_id, tenant=planned.tenant, error=error)
        subject = Subjects.run_event(planned.tenant, planned.run_id, "failed")
        await self.bus.publish(subject, failed, f"{planned.run_id}.failed")
        record = RunRecord(
            run_id=planned.run_id, tenant=planned.tenant, status=RunStatus.FAILED, goal=planned.goal[:200],
            steps_total=len(planned.plan.steps) if planned.plan else planned.steps_count,
            agents_count=len(planned.plan.agents) if planned.plan else planned.agents_count,
            submitted_at=planned.submitted_at, error=error,
        )  # fmt: skip
        await (await self.bus.kv(RUN_INDEX_BUCKET)).put(planned.run_id, record.model_dump_json().encode())

    async def _cancel(self, request: RunCancelRequested) -> None:
        run = self.runs.get(request.run_id) or await self._load(request.run_id)
        if run is None or run.tenant != request.tenant:
            return
        outcome = run.cancel(request.reason)
        await self._emit(run, outcome)
        await self._schedule()
        await self._flush()
        await self._checkpoint(run)

    # ------------------------------------------------------------------ results

    async def acquire_leases(self) -> None:
        """Take a first share of the partitions (before plans are consumed, so new runs stay in memory)."""
        self.leases = PartitionLeases(await self.bus.kv(DISPATCHER_LEASES_BUCKET), self.instance_id)
        await self._apply_lease_changes(await self.leases.renew())

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leases renewed and the owned partitions consumed, until `stop`."""
        if self.leases is None:
            await self.acquire_leases()
        assert self.leases is not None
        renewed_at = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LEASE_RENEW_S)
            if stop.is_set():
                break
            started = time.monotonic()
            try:
                changes = await self.leases.renew()
                renewed_at = time.monotonic()
                if renewed_at - started > LEASE_RENEW_S:
                    log.warning("lease renewal took %.1fs", renewed_at - started)
            except (nats.errors.Error, TimeoutError) as exc:  # NATS away: keep what we have, try again
                log.warning("lease renewal failed: %s", exc)
                changes = LeaseChanges()
                if time.monotonic() - renewed_at > DISPATCHER_LEASES_BUCKET.ttl_s:
                    changes.lost = set(self.leases.owned)  # expired by now: others may own them
                    self.leases.owned.clear()
            await self._apply_lease_changes(changes)
        await self._stop_partitions(set(self._loops))
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            async with self._lock:  # hand over clean state: whoever takes the runs replays nothing
                await self._checkpoint_due(list(self.runs.values()), force=True)
            await self.leases.release_all()

    async def _apply_lease_changes(self, changes: LeaseChanges) -> None:
        """Hand over what we lost or must give up, then take up what we gained.

        Kept short (the loops stop at once, together): the next renewal must come well within the TTL.
        """
        assert self.leases is not None
        self.scheduler.replicas = self.leases.members  # the caps are global: each replica holds its share
        leaving = changes.lost | changes.surplus
        if leaving:
            await self._stop_partitions(leaving)
            async with self._lock:
                await self._hand_over(leaving)
            for partition in changes.surplus:
                await self.leases.release(partition)
        # Every owned partition gets its results loop first, whatever happens next: a renewal that died
        # half-way (NATS away) must not leave an owned partition unread, which no later renewal would notice.
        for partition in sorted(set(self.leases.owned) - set(self._loops)):
            partition_stop = asyncio.Event()
            loop = functools.partial(self._results_loop, partition, partition_stop)
            task = asyncio.create_task(self.bus.loops.run(f"results-{partition}", loop, partition_stop))
            self._loops[partition] = (task, partition_stop)
        self._to_adopt = (self._to_adopt | changes.gained) & set(self.leases.owned)
        if self._to_adopt:
            try:
                await self._adopt(self._to_adopt)
                self._to_adopt = set()
            except (nats.errors.Error, TimeoutError) as exc:  # tried again at the next renewal
                log.warning("adopting the runs of partitions %s failed: %s", sorted(self._to_adopt), exc)

    async def _hand_over(self, partitions: set[int]) -> None:
        """Checkpoint the partitions' runs (acking the results they cover) and drop them from memory.

        Checkpoints are compare-and-set: a new owner that already wrote a newer state is never overwritten.
        """
        for run in [run for run in self.runs.values() if result_partition(run.run_id) in partitions]:
            if await self._checkpoint(run):
                self._forget(run.run_id)

    async def _adopt(self, partitions: set[int]) -> None:
        """Load the running runs of newly owned partitions, so even a run with no result in flight is watched.

        They are found by their running markers (`running.p<N>.<run_id>`), not by reading every checkpoint.
        """
        run_ids = []
        for partition in sorted(partitions):
            markers = await self.bus.kv_keys(RUN_STATE_BUCKET, f"{RUNNING_MARKER_PREFIX}.p{partition}.*")
            run_ids.extend(marker.rsplit(".", 1)[-1] for marker in markers)
        async with self._lock:
            for run_id in run_ids:
                if run_id not in self.runs and run_id not in self.finished:
                    await self._load(run_id)
            await self._schedule()  # steps a checkpoint left ready (over a concurrency cap) go out now
            await self._flush()

    async def sweep_lost_steps(self, stop: asyncio.Event) -> None:
        """Fail attempts that got no result long after their dispatch, so they are retried or dead-lettered.

        The safety net for a step message lost in a crash (a nats-server killed before flushing,
        a worker dying past max_deliver): every accepted step ends succeeded, failed or cancelled.
        """
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.sweep_interval_s)
            try:
                async with self._lock:
                    await self._sweep()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("lost-step sweep failed: %s", exc)

    async def _sweep(self) -> None:
        now, queued_at, touched = time.monotonic(), {}, {}
        for run in list(self.runs.values()):
            for step_id, state in run.steps.items():
                if state.phase is not StepPhase.QUEUED:
                    continue
                key = (run.run_id, step_id, state.attempt)
                since = queued_at[key] = self._queued_at.get(key, now)
                waited_s = now - since
                if waited_s < state.spec.timeout_s * 2 + self.settings.lost_step_grace_s:
                    continue
                log.warning("run %s step %s attempt %d: no result after %.0fs", run.run_id, step_id, state.attempt, waited_s)
                result = StepResult(
                    run_id=run.run_id, step_id=step_id, attempt=state.attempt, status=StepStatus.FAILED,
                    error=f"no result {waited_s:.0f}s after dispatch (step lost)", started_at=utc_now(),
                    finished_at=utc_now(), worker_id=f"dispatcher:{self.instance_id}",
                )  # fmt: skip
                outcome = run.apply(result)
                await self._emit(run, outcome, result)
                touched[run.run_id] = run
        self._queued_at = {k: v for k, v in {**self._queued_at, **queued_at}.items() if k in queued_at or v > now}
        if touched:
            touched.update({run.run_id: run for run in await self._schedule()})
            await self._flush()
            for run in touched.values():
                await self._checkpoint(run)

    async def _stop_partitions(self, partitions: set[int]) -> None:
        """Stop the partitions' result loops, together; each finishes the batch in its hands first."""
        loops = [loop for p in partitions if (loop := self._loops.pop(p, None)) is not None]
        for _, partition_stop in loops:
            partition_stop.set()
        await asyncio.gather(*(task for task, _ in loops))

    def _owns(self, run_id: str) -> bool:
        return self.leases is not None and result_partition(run_id) in self.leases.owned

    def _forget(self, run_id: str) -> None:
        # Callers checkpoint first (which acks the results it covers) or nak what it could not cover.
        self._unacked.pop(run_id, None)
        self._checkpointed_at.pop(run_id, None)
        self._outputs.pop(run_id, None)
        self.runs.pop(run_id, None)
        self.revisions.pop(run_id, None)
        self._last_progress.pop(run_id, None)
        self._finished_unreported.pop(run_id, None)

    async def _results_loop(self, partition: int, stop: asyncio.Event) -> None:
        """Consume one partition's results in batches: apply, publish, checkpoint, ack (see `_apply_batch`)."""
        psub = await self.bus.pull_subscription(results_consumer(partition))

        async def apply(msgs: list[Msg]) -> None:
            async with self._lock:
                await self._apply_batch(msgs)

        async def idle() -> None:
            await self._idle(partition)

        await consume_batches(
            psub, apply, stop, batch=self.settings.results_batch, on_idle=idle,
            give_up_after=self.settings.results_give_up_after,
        )  # fmt: skip

    async def _apply_batch(self, msgs: list[Msg]) -> None:
        to_ack: list[tuple[str, Msg]] = []
        touched: dict[str, RunState] = {}
        for msg in msgs:
            try:
                run = await self._apply_result(msg, touched)
            except Exception as exc:  # one result's failure is that result's, through the one policy
                await fail(msg, exc, self.settings.results_give_up_after)
                continue
            to_ack.append((run.run_id if run is not None else "", msg))
        touched.update({run.run_id: run for run in await self._schedule()})
        await self._flush_or_rewind(touched)
        for run_id, msg in to_ack:
            if run_id:
                self._unacked.setdefault(run_id, []).append(msg)
            else:
                await _settle_quietly(msg.ack())
        await self._checkpoint_due(touched.values())

    async def _flush_or_rewind(self, touched: dict[str, RunState]) -> None:
        """`_flush`; when a publish is not acknowledged (its NATS node went away), the touched runs in memory
        are ahead of what their streams hold (a step marked dispatched may never have been stored, and
        would wait for the lost-step sweeper): rewind them to their last checkpoint. The results applied
        since are nak'd and come back, and re-applying them publishes again (deduplicated by message id)."""
        try:
            await self._flush()
        except PublishNotAcknowledged:
            for run_id in touched:
                for msg in self._unacked.get(run_id, []):
                    await _settle_quietly(msg.nak())
                self._forget(run_id)
                self._events.pop(run_id, None)
            log.warning("publishes not acknowledged: %d runs rewound to their checkpoints", len(touched))
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # else their next result loads them
                for run_id in touched:
                    if self._owns(run_id):
                        await self._load(run_id)
            raise

    async def _apply_result(self, msg: Msg, touched: dict[str, RunState]) -> RunState | None:
        """Apply one result message; the run it changed (None: nothing to wait for before its ack).

        A result must match a dispatched attempt of a known step of a known run; anything else is
        rejected (terminated, logged) or, where it may still become valid, retried a bounded number of times.
        """
        result = StepResult.model_validate_json(msg.data)
        if msg.subject != Subjects.result(result.run_id):
            raise Reject(f"result for run {result.run_id} arrived on {msg.subject}")
        run = self.runs.get(result.run_id) or await self._load(result.run_id)
        if run is None:
            if result.run_id in self.finished:
                self._worker_events(result)
                return None
            # Its plan may not be processed (or checkpointed) yet; a run that never appears gives up.
            raise Retry(f"result for unknown run {result.run_id}", delay_s=1.0, bounded=True)
        state = run.steps.get(result.step_id)
        if state is None:
            raise Reject(f"result for step {result.step_id}, which run {result.run_id} does not have")
        outcome = run.apply(result)
        if outcome.early:
            # A replica that crashed got further than its last checkpoint; bounded: a forged attempt ends.
            raise Retry(f"result for attempt {result.attempt} of {result.step_id} ahead of {state.attempt}",
                        delay_s=1.0, bounded=True)  # fmt: skip
        self._worker_events(result)
        if outcome.changed:
            await self._emit(run, outcome, result)
            touched[run.run_id] = run
        return run

    async def _checkpoint_due(self, runs: Iterable[RunState], force: bool = False) -> None:
        """Checkpoint runs whose last checkpoint is older than the interval (or finished ones).

        Coalescing checkpoints keeps a 4,000-step run from rewriting its state for every trickle of
        results; the results they cover stay unacknowledged until then, so a crash replays them.
        """
        now = time.monotonic()
        for run in list(runs):
            due = now - self._checkpointed_at.get(run.run_id, 0.0) >= self.settings.checkpoint_interval_s
            if force or due or run.phase is not RunPhase.RUNNING:
                await self._checkpoint(run)

    # ------------------------------------------------------------------ output

    async def _emit(self, run: RunState, outcome: Outcome, result: StepResult | None = None) -> None:
        """Publish what a transition produced (without waiting; the caller flushes)."""
        for step_id in outcome.succeeded:  # held before any dependent is dispatched
            if result is not None and result.output is not None and run.children[step_id]:
                self._outputs.setdefault(run.run_id, {})[step_id] = HeldOutput(result.output, len(run.children[step_id]))
        await self._dispatch(run, outcome.dispatches)
        for parent, new_steps in outcome.spawned:
            await self._event(run, parent, run.steps[parent].attempt, StepEventKind.SPAWNED,
                              attributes={"spawned": ",".join(new_steps)})  # fmt: skip
        self._finished_unreported.setdefault(run.run_id, set()).update(
            [*outcome.succeeded, *(step_id for step_id, _ in outcome.dead_lettered)]
        )
        for step_id in outcome.succeeded:
            assert result is not None
            await self._event(
                run, step_id, result.attempt, StepEventKind.SUCCEEDED,
                duration_ms=(result.finished_at - result.started_at).total_seconds() * 1000,
                prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                worker_id=result.worker_id,
            )  # fmt: skip
        for step_id, next_attempt, error in outcome.retried:
            await self._event(run, step_id, next_attempt - 1, StepEventKind.FAILED, error=error)
            await self._event(run, step_id, next_attempt, StepEventKind.RETRIED, error=error)
        for step_id, error in outcome.dead_lettered:
            await self._event(run, step_id, run.steps[step_id].attempt, StepEventKind.DEAD_LETTERED, error=error)
        for step_id in outcome.cancelled:
            await self._event(run, step_id, run.steps[step_id].attempt, StepEventKind.CANCELLED)
        if outcome.run_finished is not None:
            await self._finish_run(run, outcome.run_finished)
        else:
            await self._progress(run)

    async def _schedule(self) -> list[RunState]:
        """Give free slots to ready steps across runs; the runs that got some."""
        filled = self.scheduler.fill(self.runs.values())
        for run, dispatches in filled:
            await self._dispatch(run, dispatches)
        return [run for run, _ in filled]

    async def _dispatch(self, run: RunState, dispatches: list[Dispatch]) -> None:
        """Publish steps to the pool's work queue (without waiting; the caller flushes)."""
        now = utc_now()
        for dispatch in dispatches:
            step = run.steps[dispatch.step_id].spec
            if run.depends_on[step.id] != step.depends_on:  # grown by a spawn: the worker reads the new inputs too
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
                inputs=self._inline_inputs(run, step.depends_on, first_attempt=dispatch.attempt == 1),
                memory=memory,
                memory_omitted=memory_omitted,
                spawn_budget=run.spawn_budget() if "spawn" in step.tools else None,
            )
            await self.bus.publish_nowait(
                Subjects.steps(self.settings.pool), message, msg_id=f"{run.run_id}.{step.id}.{dispatch.attempt}"
            )
            self._queued_at[(run.run_id, step.id, dispatch.attempt)] = time.monotonic() + dispatch.delay_s
            # depends_on lets the event log rebuild the DAG (critical path) without the plan.
            attributes = {"depends_on": ",".join(run.depends_on[step.id])}
            if step.id in run.spawned_by:  # the recorder's spawned_by column
                attributes["spawned_by"] = run.spawned_by[step.id]
            await self._event(run, step.id, dispatch.attempt, StepEventKind.QUEUED, attributes=attributes)

    def _inline_inputs(self, run: RunState, depends_on: tuple[str, ...], first_attempt: bool) -> dict[str, str]:
        """The dependencies' outputs we hold, within the message budget; an output is let go once every
        dependent got its first dispatch (retries, and a run taken over from a checkpoint, read the bucket)."""
        held = self._outputs.get(run.run_id)
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

    def _worker_events(self, result: StepResult) -> None:
        """The events a worker sent along with its result go out with ours (duplicates share event ids).

        Only events of the result's own attempt, of the kinds a worker reports, with their derived ids:
        a result cannot write another step's history.
        """
        if not result.events:
            return
        kept = [
            e for e in result.events
            if (e.run_id, e.step_id, e.attempt) == (result.run_id, result.step_id, result.attempt)
            and e.kind in WORKER_EVENT_KINDS and is_step_event_id(e)
        ]  # fmt: skip
        if len(kept) < len(result.events):
            log.warning("run %s step %s: %d foreign step events in a result dropped",
                        result.run_id, result.step_id, len(result.events) - len(kept))  # fmt: skip
        self._events.setdefault(result.run_id, []).extend(kept)

    async def _event(self, run: RunState, step_id: str, attempt: int, kind: StepEventKind, **fields: object) -> None:
        """Buffer a step event; `_flush` publishes each run's buffer as one StepEventBatch."""
        event = StepEvent(
            event_id=step_event_id(run.run_id, step_id, attempt, kind),
            run_id=run.run_id,
            tenant=run.tenant,
            step_id=step_id,
            agent_id=run.steps[step_id].spec.agent_id,
            attempt=attempt,
            kind=kind,
            **fields,  # type: ignore[arg-type]
        )
        self._events.setdefault(run.run_id, []).append(event)

    async def _flush(self) -> None:
        """Publish buffered events, then wait until the streams acknowledged everything published."""
        events, self._events = self._events, {}
        for run_id, run_events in events.items():
            for i in range(0, len(run_events), EVENTS_PER_BATCH):
                batch = StepEventBatch(events=tuple(run_events[i : i + EVENTS_PER_BATCH]))
                await self.bus.publish_nowait(Subjects.step_event_batch(run_id), batch)
        await self.bus.flush_publishes()

    async def _progress(self, run: RunState, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress.get(run.run_id, 0.0) < self.settings.progress_interval_s:
            return
        self._last_progress[run.run_id] = now
        progress = RunProgress(
            run_id=run.run_id,
            tenant=run.tenant,
            steps_total=len(run.steps),
            steps_queued=run.in_flight,
            steps_succeeded=run.count(StepPhase.SUCCEEDED),
            steps_failed=run.count(StepPhase.FAILED),
            retries_count=run.retries_count,
            finished_step_ids=tuple(sorted(self._finished_unreported.pop(run.run_id, ()))),
        )
        await self.bus.publish_nowait(Subjects.run_event(run.tenant, run.run_id, "progress"), progress)

    async def _idle(self, partition: int) -> None:
        """A partition with no results for a while: publish its runs' latest counts, checkpoint what waits."""
        async with self._lock:
            runs = [run for run in self.runs.values() if result_partition(run.run_id) == partition]
            for run in runs:
                await self._progress(run)
            await self._checkpoint_due([run for run in runs if run.run_id in self._unacked], force=True)

    async def _finish_run(self, run: RunState, phase: RunPhase) -> None:
        summary = run.summary()
        subject = Subjects.run_event
        if phase is RunPhase.EXECUTED:
            executed = RunExecuted(
                run_id=run.run_id, tenant=run.tenant, goal=run.planned.goal,
                sink_step_ids=tuple(run.sink_step_ids()), summary=summary, submitted_at=run.submitted_at,
                missing_agents=tuple(run.missing_agents()),
            )  # fmt: skip
            await self.bus.publish_nowait(subject(run.tenant, run.run_id, "executed"), executed, f"{run.run_id}.executed")
            await self._index(run, RunStatus.SYNTHESIZING)
        elif phase is RunPhase.FAILED:
            failed = RunFailed(
                run_id=run.run_id, tenant=run.tenant, error=run.error,
                failed_step_ids=tuple(run.failed_step_ids()), summary=summary,
                missing_agents=tuple(run.missing_agents()),
            )  # fmt: skip
            await self.bus.publish_nowait(subject(run.tenant, run.run_id, "failed"), failed, f"{run.run_id}.failed")
            await self._index(run, RunStatus.FAILED, run.error)
        else:
            cancelled = RunCancelled(run_id=run.run_id, tenant=run.tenant, reason=run.error)
            await self.bus.publish_nowait(
                subject(run.tenant, run.run_id, "cancelled"), cancelled, f"{run.run_id}.cancelled"
            )
            await self._index(run, RunStatus.CANCELLED, run.error)
        log.info("run %s %s: %s", run.run_id, phase.value, summary.model_dump(exclude={"v"}))

    async def _index(self, run: RunState, status: RunStatus, error: str | None = None) -> None:
        record = RunRecord(
            run_id=run.run_id, tenant=run.tenant, status=status, goal=run.planned.goal[:200],
            steps_total=len(run.steps), agents_count=len(run.agents),
            submitted_at=run.submitted_at, error=error,
        )  # fmt: skip
        kv = await self.bus.kv(RUN_INDEX_BUCKET)
        await kv.put(run.run_id, record.model_dump_json().encode())

    # ------------------------------------------------------------------ checkpoints

    async def _checkpoint(self, run: RunState) -> bool:
        """Write the run's checkpoint if nobody else wrote one since we read or wrote ours (compare-and-set).

        False when superseded (a lease moved, a cancel by another replica): we drop the run from memory
        and it is re-read from the newer checkpoint when needed.
        """
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        body = run.checkpoint_json(run.tenant)
        covered = self._unacked.pop(run.run_id, [])
        try:
            if run.run_id in self.revisions:
                self.revisions[run.run_id] = await kv.update(run.run_id, body, last=self.revisions[run.run_id])
            else:
                self.revisions[run.run_id] = await kv.create(run.run_id, body)
        except KeyWrongLastSequenceError:
            log.info("run %s was changed by another replica; re-reading it", run.run_id)
            self._forget(run.run_id)
            for msg in covered:  # re-applied by whoever holds the newer state
                await _settle_quietly(msg.nak(delay=0.5))
            return False
        self._checkpointed_at[run.run_id] = time.monotonic()
        for msg in covered:
            await _settle_quietly(msg.ack())
        if run.phase is not RunPhase.RUNNING:
            self._forget(run.run_id)
            await self._finished(run.run_id)
        return True

    async def _finished(self, run_id: str) -> None:
        """Remember that the run is over (a bounded memory: an evicted run is re-read from its checkpoint)
        and drop its running marker."""
        self.finished[run_id] = None
        if len(self.finished) > FINISHED_RUNS_KEPT:
            del self.finished[next(iter(self.finished))]
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        with contextlib.suppress(nats.errors.Error, TimeoutError):  # a marker left behind is dropped at the next adopt
            await kv.delete(running_marker(run_id))

    async def _load(self, run_id: str) -> RunState | None:
        """Take a run over from its checkpoint and its planned event (after a restart or from another replica)."""
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        try:
            entry = await kv.get(run_id)
        except KeyNotFoundError:
            return None
        checkpoint = json.loads(entry.value or b"{}")
        self.revisions[run_id] = entry.revision or 0
        if checkpoint.get("phase") != RunPhase.RUNNING.value:
            await self._finished(run_id)
            return None
        try:
            raw = await self.bus.js.get_last_msg(RUNS.name, Subjects.run_event(checkpoint["tenant"], run_id, "planned"))
        except NotFoundError:
            log.warning("run %s has a checkpoint but no planned event yet", run_id)
            return None
        planned = await self.plans.resolved(RunPlanned.model_validate_json(raw.data or b""))
        run = RunState.restore(planned, checkpoint, self.settings.max_in_flight_per_run, self.retry, self.limits)
        self.runs[run_id] = run
        # What the previous owner finished but had not reported yet is lost with it: report every finished step.
        finished = (StepPhase.SUCCEEDED, StepPhase.FAILED)
        self._finished_unreported[run_id] = {step_id for step_id, step in run.steps.items() if step.phase in finished}
        log.info("run %s loaded from its checkpoint", run_id)
        return run
