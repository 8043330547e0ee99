"""Ownership of results partitions among dispatcher replicas, through expiring KV leases.

Every replica registers itself (`member.<id>`, renewed), counts the members, and holds about
its share of the partitions (`p<N>` = owner id, renewed with compare-and-set). A replica that
dies stops renewing; its leases expire after the bucket's TTL and the others take them over,
loading the partition's runs from their checkpoints. A replica that joins makes the others
release their surplus, so the partitions spread out again.
"""

from __future__ import annotations

import logging
import math

from nats.js.errors import KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from swarm.contracts import RESULT_PARTITIONS

log = logging.getLogger(__name__)

MEMBER_PREFIX = "member."


class PartitionLeases:
    """This replica's view of which partitions it owns; `renew` keeps it current."""

    def __init__(self, kv: KeyValue, instance_id: str, partitions: int = RESULT_PARTITIONS) -> None:
        self.kv = kv
        self.instance_id = instance_id
        self.partitions = partitions
        self.owned: dict[int, int] = {}  # partition -> revision of our lease

    async def renew(self) -> tuple[set[int], set[int]]:
        """Renew, release surplus, acquire free partitions; returns (gained, lost)."""
        await self.kv.put(f"{MEMBER_PREFIX}{self.instance_id}", b"")
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        members = max(1, sum(1 for k in keys if k.startswith(MEMBER_PREFIX)))
        share = math.ceil(self.partitions / members)
        lost: set[int] = set()
        for partition, revision in list(self.owned.items()):
            try:
                self.owned[partition] = await self.kv.update(self._key(partition), self._me, last=revision)
            except KeyWrongLastSequenceError:
                lost.add(partition)
                del self.owned[partition]
        for partition in sorted(self.owned)[share:]:
            await self.release(partition)
            lost.add(partition)
        gained: set[int] = set()
        for partition in range(self.partitions):
            if len(self.owned) >= share:
                break
            if partition in self.owned:
                continue
            try:
                self.owned[partition] = await self.kv.create(self._key(partition), self._me)
                gained.add(partition)
            except KeyWrongLastSequenceError:
                continue
        if gained or lost:
            log.info("partitions: gained %s, lost %s, own %s", sorted(gained), sorted(lost), sorted(self.owned))
        return gained, lost

    async def release(self, partition: int) -> None:
        """Give a partition up (shutdown, rebalancing)."""
        revision = self.owned.pop(partition, None)
        if revision is not None:
            try:
                await self.kv.delete(self._key(partition), last=revision)
            except KeyWrongLastSequenceError:
                pass

    async def release_all(self) -> None:
        """Give everything up and leave (graceful shutdown: the others take over at once)."""
        for partition in list(self.owned):
            await self.release(partition)
        await self.kv.delete(f"{MEMBER_PREFIX}{self.instance_id}")

    @property
    def _me(self) -> bytes:
        return self.instance_id.encode()

    @staticmethod
    def _key(partition: int) -> str:
        return f"p{partition}"
