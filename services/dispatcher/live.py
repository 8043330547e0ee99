"""The runs this replica holds in memory: one `LiveRun` record per run, and `LiveRuns`, which keeps them,
puts ready steps out (through the `Outbox`) and checkpoints them (through the `RunStore`).

Everything kept about a run lives in its record, so forgetting a run is one `pop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from services.dispatcher.scheduling import Scheduler
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.state import RunPhase, RunState
from swarm.bus import PublishNotAcknowledged
from swarm.contracts import result_partition

if TYPE_CHECKING:
    from services.dispatcher.outbox import Outbox
    from services.dispatcher.store import RunStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HeldOutput:
    """A step's output, kept for its dependents' dispatches."""

    text: str
    dependents_left: int


@dataclass(slots=True)
class LiveRun:
    """A run this replica holds: its pure state, and what the I/O around that state keeps about it."""

    state: RunState
    revision: int | None = None  # of the checkpoint we last wrote or read; None: the run has none yet
    # Results applied, waiting for the checkpoint that covers them to be acked.
    unacked: list[Msg] = field(default_factory=list)
    checkpointed_at: float = 0.0  # monotonic time of our last checkpoint of it
    progress_at: float = 0.0  # monotonic time of its last progress event
    unreported: set[str] = field(default_factory=set)  # steps finished since its last progress event
    outputs: dict[str, HeldOutput] = field(default_factory=dict)  # step -> output its dependents get inline
    # (step, attempt) -> monotonic time it was due at the workers (the lost-step sweeper's clock).
    queued_at: dict[tuple[str, int], float] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.state.run_id


class RunsRewound(PublishNotAcknowledged):
    """Publishes were not acknowledged, and these runs were rewound to their checkpoints (see `LiveRuns.flush`)."""

    def __init__(self, reason: str, run_ids: list[str]) -> None:
        super().__init__(reason)
        self.run_ids = run_ids


async def settle_quietly(settling: Awaitable[None]) -> None:
    """Ack or nak; a message settled already (isolated after a failed batch) or a lost ack is harmless."""
    with contextlib.suppress(nats.errors.Error):
        await settling


class LiveRuns:
    """The runs in memory, by run id; the KV checkpoints make any replica able to take them over.

    Callers hold `lock` around anything that reads or changes the runs.
    """

    def __init__(
        self, store: RunStore, outbox: Outbox, scheduler: Scheduler, settings: DispatcherSettings
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.scheduler = scheduler
        self.settings = settings
        self.lock = asyncio.Lock()
        self._held: dict[str, LiveRun] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held(self) -> list[LiveRun]:
        """Every run held (a copy: callers may forget runs while they go through it)."""
        return list(self._held.values())

    def known(self, run_id: str) -> bool:
        """Held, or known to be over."""
        return run_id in self._held or self.store.is_over(run_id)

    def add(self, live: LiveRun) -> None:
        """Hold a new run."""
        self._held[live.run_id] = live

    def forget(self, run_id: str) -> None:
        """Drop a run from memory; callers checkpoint first (which acks the results it covers) or nak them."""
        self._held.pop(run_id, None)

    async def load(self, run_id: str) -> LiveRun | None:
        """Take a run over from its checkpoint (after a restart or from another replica)."""
        live = await self.store.load(run_id)
        if live is not None:
            self._held[run_id] = live
        return live

    async def get_or_load(self, run_id: str) -> LiveRun | None:
        """The run, held or taken over from its checkpoint."""
        return self._held.get(run_id) or await self.load(run_id)

    async def schedule(self) -> list[LiveRun]:
        """Give free slots to ready steps across runs (published without waiting); the runs that got some."""
        filled = self.scheduler.fill(live.state for live in self._held.values())
        runs = []
        for run, dispatches in filled:
            live = self._held[run.run_id]
            await self.outbox.dispatch(live, dispatches)
            runs.append(live)
        return runs

    async def flush(self) -> None:
        """Publish the buffered events and wait for every publish's ack.

        When one is not acknowledged (its NATS node went away), the runs changed since the last flush are
        ahead of what their streams hold (a step marked dispatched may never have been stored, and would
        wait for the lost-step sweeper): they are rewound to their last checkpoint, i.e. dropped from
        memory, and the results applied since are nak'd. They come back, and re-applying them publishes
        again (deduplicated by message id). `RunsRewound` says which runs.
        """
        changed = dict(self.outbox.unflushed)
        try:
            await self.outbox.flush()
        except PublishNotAcknowledged as exc:
            for run_id, live in changed.items():
                for msg in live.unacked:
                    await settle_quietly(msg.nak())
                self.forget(run_id)
                self.outbox.drop_events(run_id)
            log.warning("publishes not acknowledged: %d runs rewound to their checkpoints", len(changed))
            raise RunsRewound(str(exc), list(changed)) from exc

    async def checkpoint(self, live: LiveRun) -> bool:
        """Checkpoint the run (compare-and-set) and settle the results it covers; a finished run is forgotten.

        What was published before is acknowledged first: a checkpoint never names a dispatch the work
        queue may not hold. False when superseded (a lease moved, a cancel by another replica): we drop
        the run from memory and it is re-read from the newer checkpoint when needed.
        """
        if not self.outbox.clean:
            await self.flush()
        covered, live.unacked = live.unacked, []
        if not await self.store.save(live):
            log.info("run %s was changed by another replica; re-reading it", live.run_id)
            self.forget(live.run_id)
            for msg in covered:  # re-applied by whoever holds the newer state
                await settle_quietly(msg.nak(delay=0.5))
            return False
        live.checkpointed_at = time.monotonic()
        for msg in covered:
            await settle_quietly(msg.ack())
        if live.state.phase is not RunPhase.RUNNING:
            self.forget(live.run_id)
            await self.store.mark_over(live.run_id)
        return True

    def due(self, runs: Iterable[LiveRun]) -> list[LiveRun]:
        """The runs whose last checkpoint is older than the interval, and finished ones."""
        now, interval = time.monotonic(), self.settings.checkpoint_interval_s
        return [
            live for live in runs
            if now - live.checkpointed_at >= interval or live.state.phase is not RunPhase.RUNNING
        ]  # fmt: skip

    async def checkpoint_due(self, runs: Iterable[LiveRun], force: bool = False) -> None:
        """Checkpoint runs whose last checkpoint is older than the interval (or finished ones).

        Coalescing checkpoints keeps a 4,000-step run from rewriting its state for every trickle of
        results; the results they cover stay unacknowledged until then, so a crash replays them.
        """
        for live in list(runs) if force else self.due(runs):
            await self.checkpoint(live)

    def in_partitions(self, partitions: set[int]) -> list[LiveRun]:
        """The runs whose results come on these partitions."""
        return [live for live in self._held.values() if result_partition(live.run_id) in partitions]

    async def hand_over(self, partitions: set[int]) -> None:
        """Checkpoint the partitions' runs (acking the results they cover) and drop them from memory.

        Checkpoints are compare-and-set: a new owner that already wrote a newer state is never overwritten.
        """
        for live in self.in_partitions(partitions):
            if await self.checkpoint(live):
                self.forget(live.run_id)

    async def adopt(self, partitions: set[int]) -> None:
        """Load the running runs of owned partitions: even a run with no result in flight is watched."""
        run_ids = []
        for partition in sorted(partitions):
            run_ids.extend(await self.store.running_in(partition))
        async with self.lock:
            for run_id in run_ids:
                if not self.known(run_id):
                    await self.load(run_id)
            await self.schedule()  # steps a checkpoint left ready (over a concurrency cap) go out now
            await self.flush()
