"""Step results from the workers, one results partition at a time, in batches.

Ordering: a batch of results is applied and its steps published at once; once per checkpoint interval
of a run: publish the buffered step events → wait for the streams' acks → checkpoint → ack the results it
covers. A crash anywhere in between replays results onto the last checkpoint; re-published steps carry the
same message id and are de-duplicated by the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg

from services.dispatcher.live import LiveRun, LiveRuns, RunsRewound, settle_quietly
from services.dispatcher.settings import DispatcherSettings
from swarm.bus import Bus, ConsumerSpec, Reject, Retry, consume_batches, fail
from swarm.contracts import (
    DISPATCHER_RESULTS_CONSUMER,
    RESULTS,
    StepEventKind,
    StepResult,
    Subjects,
    is_step_event_id,
    results_of,
)

log = logging.getLogger(__name__)

# What a worker may report about its own attempt; the dispatcher writes the rest of a step's history.
WORKER_EVENT_KINDS = frozenset({StepEventKind.STARTED, StepEventKind.TOOL_CALL, StepEventKind.INFERENCE_DONE})


def results_consumer(partition: int) -> ConsumerSpec:
    """The durable consumer of one results partition (read by the replica that owns it)."""
    return ConsumerSpec(
        stream=RESULTS,
        durable=f"{DISPATCHER_RESULTS_CONSUMER}-{partition}",
        filter_subjects=(Subjects.results_partition(partition),),
        ack_wait_s=10.0,  # results are acked within a checkpoint interval: a crashed replica's come back soon
    )


class Results:
    """Applies results to their runs; the results wait for the checkpoint that covers them to be acked."""

    def __init__(
        self, bus: Bus, runs: LiveRuns, settings: DispatcherSettings, owns: Callable[[str], bool]
    ) -> None:
        self.bus = bus
        self.runs = runs
        self.settings = settings
        self.owns = owns  # whether the run's results partition is ours

    async def consume(self, partition: int, stop: asyncio.Event) -> None:
        """Consume one partition's results in batches until `stop`: apply, publish, checkpoint, ack."""
        psub = await self.bus.pull_subscription(results_consumer(partition))

        async def apply(msgs: list[Msg]) -> None:
            async with self.runs.lock:
                await self._apply_batch(msgs)

        async def idle() -> None:
            await self._idle(partition)

        await consume_batches(
            psub, apply, stop, batch=self.settings.results_batch, on_idle=idle,
            give_up_after=self.settings.results_give_up_after,
        )  # fmt: skip

    async def _idle(self, partition: int) -> None:
        """A partition with no results for a while: publish its runs' latest counts, checkpoint what waits.

        What was published since the last flush is flushed too: a publish's ack is not waited for longer
        than a fetch timeout (the bus gives up on acks older than its request timeout).
        """
        async with self.runs.lock:
            runs = self.runs.in_partitions({partition})
            for live in runs:
                await self.runs.outbox.progress(live)
            if not self.runs.outbox.clean:
                await self._flush_or_rewind()
            await self.runs.checkpoint_due([live for live in runs if live.unacked], force=True)

    async def _apply_batch(self, msgs: list[Msg]) -> None:
        to_ack: list[tuple[LiveRun | None, Msg]] = []
        touched: dict[str, LiveRun] = {}
        for msg in msgs:
            try:
                live = await self._apply(msg, touched)
            except Exception as exc:  # one result's failure is that result's, through the one policy
                await fail(msg, exc, self.settings.results_give_up_after)
                continue
            to_ack.append((live, msg))
        touched.update({live.run_id: live for live in await self.runs.schedule()})
        # The steps are out (published without waiting). Their acks are waited for only before a
        # checkpoint, which is due once per interval per run: a batch between checkpoints does not wait
        # for a round trip to the streams, and the next results are applied sooner.
        due = self.runs.due(touched.values())
        over = [msg for live, msg in to_ack if live is None]
        for live, msg in to_ack:
            if live is not None:
                live.unacked.append(msg)
        if not due and not over:
            return
        await self._flush_or_rewind()
        for msg in over:  # their worker events are stored now
            await settle_quietly(msg.ack())
        for live in due:
            await self.runs.checkpoint(live)

    async def _flush_or_rewind(self) -> None:
        """Flush; the runs rewound (see `LiveRuns.flush`) are read back from their checkpoints if ours."""
        try:
            await self.runs.flush()
        except RunsRewound as exc:
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # else their next result loads them
                for run_id in exc.run_ids:
                    if self.owns(run_id):
                        await self.runs.load(run_id)
            raise

    async def _apply(self, msg: Msg, touched: dict[str, LiveRun]) -> LiveRun | None:
        """Apply one results message (a batch, or a single result); the run it changed (None: nothing to wait
        for before its ack).

        A result must match a dispatched attempt of a known step of a known run on its own subject; one that
        cannot is dropped and logged, not its batch-mates. A message that may still become valid is retried a
        bounded number of times (re-applying its other results changes nothing: RunState is idempotent).
        """
        results = results_of(msg.data)
        tenant, run_id = Subjects.scope_of(msg.subject)
        if msg.subject != Subjects.result(tenant, run_id):
            raise Reject(f"results on {msg.subject}, not a results subject")
        foreign = [r for r in results if r.run_id != run_id]
        if foreign:
            log.warning("%d results of other runs than %s on %s: dropped", len(foreign), run_id, msg.subject)
            results = tuple(r for r in results if r.run_id == run_id)
            if not results:
                raise Reject(f"results for run {foreign[0].run_id} arrived on {msg.subject}")
        live = await self.runs.get_or_load(run_id)
        if live is None:
            if self.runs.store.is_over(run_id):
                for result in results:  # the subject's tenant: what the worker may publish for
                    self._worker_events(result, tenant)
                return None
            # Its plan may not be processed (or checkpointed) yet; a run that never appears gives up.
            raise Retry(f"results for unknown run {run_id}", delay_s=1.0, bounded=True)
        run = live.state
        if tenant != run.tenant:  # a worker may publish results for its tenants' runs only (their subjects)
            raise Reject(f"results for run {run_id} of tenant {run.tenant} arrived on {msg.subject}")
        early: Retry | None = None
        for result in results:
            state = run.steps.get(result.step_id)
            if state is None:
                log.warning("result for step %s, which run %s does not have: dropped", result.step_id, run_id)
                continue
            outcome = run.apply(result)
            if outcome.early:
                # A replica that crashed got further than its last checkpoint; bounded: a forged attempt ends.
                early = Retry(f"result for attempt {result.attempt} of {result.step_id} ahead of {state.attempt}",
                              delay_s=1.0, bounded=True)  # fmt: skip
                continue
            self._worker_events(result, run.tenant)
            if outcome.changed:
                await self.runs.outbox.emit(live, outcome, result)
                touched[live.run_id] = live
        if early is not None:
            raise early
        return live

    def _worker_events(self, result: StepResult, tenant: str) -> None:
        """The events a worker sent along with its result go out with ours (duplicates share event ids).

        Only events of the result's own attempt, of the kinds a worker reports, with their derived ids:
        a result cannot write another step's (or another tenant's) history.
        """
        if not result.events:
            return
        kept = [
            e for e in result.events
            if (e.tenant, e.run_id, e.step_id, e.attempt) == (tenant, result.run_id, result.step_id, result.attempt)
            and e.kind in WORKER_EVENT_KINDS and is_step_event_id(e)
        ]  # fmt: skip
        if len(kept) < len(result.events):
            log.warning("run %s step %s: %d foreign step events in a result dropped",
                        result.run_id, result.step_id, len(result.events) - len(kept))  # fmt: skip
        self.runs.outbox.add_events(result.run_id, kept)
