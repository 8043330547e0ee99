"""This replica's share of the results partitions: leases kept renewed (see leases.py), one results loop
per owned partition, runs handed over for partitions given up and adopted for partitions taken."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors

from services.dispatcher.leases import LeaseChanges, PartitionLeases
from services.dispatcher.live import LiveRuns
from services.dispatcher.scheduling import Scheduler
from swarm.bus import Bus
from swarm.contracts import DISPATCHER_LEASES_BUCKET, result_partition

log = logging.getLogger(__name__)

LEASE_RENEW_S = DISPATCHER_LEASES_BUCKET.ttl_s / 3

# Reads one partition's results until its event is set.
PartitionReader = Callable[[int, asyncio.Event], Awaitable[None]]


class Partitions:
    """Which results partitions are ours, and a results loop for each of them."""

    def __init__(self, bus: Bus, instance_id: str, runs: LiveRuns, scheduler: Scheduler) -> None:
        self.bus = bus
        self.instance_id = instance_id
        self.runs = runs
        self.scheduler = scheduler
        self.leases: PartitionLeases | None = None
        self._read: PartitionReader | None = None
        self._loops: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._to_adopt: set[int] = set()  # owned partitions whose running runs are not loaded yet

    def owns(self, run_id: str) -> bool:
        """Whether the run's results partition is ours."""
        return self.leases is not None and result_partition(run_id) in self.leases.owned

    async def acquire(self, read: PartitionReader) -> None:
        """Take a first share of the partitions, each read by `read` (before plans are consumed, so new runs
        stay in memory)."""
        self._read = read
        self.leases = PartitionLeases(await self.bus.kv(DISPATCHER_LEASES_BUCKET), self.instance_id)
        await self._apply(await self.leases.renew())

    async def keep(self, stop: asyncio.Event) -> None:
        """Keep the leases renewed and the owned partitions read, until `stop`; then hand everything over."""
        assert self.leases is not None, "acquire first"
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
            await self._apply(changes)
        await self._stop(set(self._loops))
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            async with self.runs.lock:  # hand over clean state: whoever takes the runs replays nothing
                await self.runs.checkpoint_due(self.runs.held(), force=True)
            await self.leases.release_all()

    async def _apply(self, changes: LeaseChanges) -> None:
        """Hand over what we lost or must give up, then take up what we gained.

        Kept short (the loops stop at once, together): the next renewal must come well within the TTL.
        """
        assert self.leases is not None and self._read is not None
        self.scheduler.replicas = self.leases.members  # the caps are global: each replica holds its share
        leaving = changes.lost | changes.surplus
        if leaving:
            await self._stop(leaving)
            async with self.runs.lock:
                await self.runs.hand_over(leaving)
            for partition in changes.surplus:
                await self.leases.release(partition)
        # Every owned partition gets its results loop first, whatever happens next: a renewal that died
        # half-way (NATS away) must not leave an owned partition unread, which no later renewal would notice.
        for partition in sorted(set(self.leases.owned) - set(self._loops)):
            partition_stop = asyncio.Event()
            loop = functools.partial(self._read, partition, partition_stop)
            task = asyncio.create_task(self.bus.loops.run(f"results-{partition}", loop, partition_stop))
            self._loops[partition] = (task, partition_stop)
        self._to_adopt = (self._to_adopt | changes.gained) & set(self.leases.owned)
        if self._to_adopt:
            try:
                await self.runs.adopt(self._to_adopt)
                self._to_adopt = set()
            except (nats.errors.Error, TimeoutError) as exc:  # tried again at the next renewal
                log.warning("adopting the runs of partitions %s failed: %s", sorted(self._to_adopt), exc)

    async def _stop(self, partitions: set[int]) -> None:
        """Stop the partitions' result loops, together; each finishes the batch in its hands first."""
        loops = [loop for p in partitions if (loop := self._loops.pop(p, None)) is not None]
        for _, partition_stop in loops:
            partition_stop.set()
        await asyncio.gather(*(task for task, _ in loops))
