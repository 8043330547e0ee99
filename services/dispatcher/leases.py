"""Ownership of results partitions among dispatcher replicas, through expiring KV leases.

Every replica registers itself (`member.<id>`, renewed), counts the members, and holds about
its share of the partitions (`p<N>` = owner id, renewed with compare-and-set). A replica that
dies stops renewing; its leases expire after the bucket's TTL and the others take them over,
loading the partition's runs from their checkpoints. A replica that joins makes the others
hand over their surplus (checkpoint its runs, then release), so the partitions spread out again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from nats.js.errors import KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from swarm.contracts import RESULT_PARTITIONS, Keys

log = logging.getLogger(__name__)


@dataclass
class LeaseChanges:
    """What one renewal changed: partitions newly ours, taken from us, and ours to hand over."""

    gained: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    surplus: set[int] = field(default_factory=set)  # still ours: the caller checkpoints, then `release`s them


class PartitionLeases:
    """This replica's view of which partitions it owns; `renew` keeps it current."""

    def __init__(self, kv: KeyValue, instance_id: str, partitions: int = RESULT_PARTITIONS) -> None:
        self.kv = kv
        self.instance_id = instance_id
        self.partitions = partitions
        self.owned: dict[int, int] = {}  # partition -> revision of our lease
        self.members = 1  # live replicas at the last renewal (the scheduler splits the global caps by it)

    async def renew(self) -> LeaseChanges:
        """Renew our leases and acquire free partitions up to our share; surplus is named, not released."""
        await self.kv.put(Keys.lease_member(self.instance_id), b"")
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        members = self.members = max(1, sum(1 for k in keys if k.startswith(Keys.LEASE_MEMBER_PREFIX)))
        share = math.ceil(self.partitions / members)
        changes = LeaseChanges()
        for partition, revision in list(self.owned.items()):
            try:
                self.owned[partition] = await self.kv.update(Keys.partition_lease(partition), self._me, last=revision)
            except KeyWrongLastSequenceError:
                changes.lost.add(partition)
                del self.owned[partition]
        changes.surplus = set(sorted(self.owned)[share:])
        for partition in range(self.partitions):
            if len(self.owned) >= share:
                break
            if partition in self.owned:
                continue
            try:
                self.owned[partition] = await self.kv.create(Keys.partition_lease(partition), self._me)
                changes.gained.add(partition)
            except KeyWrongLastSequenceError:
                continue
        if changes.gained or changes.lost or changes.surplus:
            log.info(
                "partitions: gained %s, lost %s, handing over %s, own %s",
                sorted(changes.gained), sorted(changes.lost), sorted(changes.surplus), sorted(self.owned),
            )  # fmt: skip
        return changes

    async def release(self, partition: int) -> None:
        """Give a partition up (shutdown, rebalancing)."""
        revision = self.owned.pop(partition, None)
        if revision is not None:
            try:
                await self.kv.delete(Keys.partition_lease(partition), last=revision)
            except KeyWrongLastSequenceError:
                pass

    async def release_all(self) -> None:
        """Give everything up and leave (graceful shutdown: the others take over at once)."""
        for partition in list(self.owned):
            await self.release(partition)
        await self.kv.delete(Keys.lease_member(self.instance_id))

    @property
    def _me(self) -> bytes:
        return self.instance_id.encode()
