"""Partition leases between dispatcher replicas, on a real JetStream KV bucket."""

from __future__ import annotations

import pytest

from services.dispatcher.leases import PartitionLeases
from swarm.bus import Bus
from swarm.contracts import DISPATCHER_LEASES_BUCKET

pytestmark = pytest.mark.integration


async def test_a_joining_replica_gets_the_surplus_only_after_it_is_handed_over(bus: Bus) -> None:
    kv = await bus.kv(DISPATCHER_LEASES_BUCKET)
    first, second = PartitionLeases(kv, "first", partitions=8), PartitionLeases(kv, "second", partitions=8)

    assert (await first.renew()).gained == set(range(8))
    joined = await second.renew()
    assert joined.gained == set()  # everything is still held by the first replica

    changes = await first.renew()
    assert changes.surplus == {4, 5, 6, 7} and not changes.lost
    assert set(first.owned) == set(range(8))  # named, not released: the caller checkpoints first
    assert (await second.renew()).gained == set()

    for partition in changes.surplus:
        await first.release(partition)
    assert (await second.renew()).gained == {4, 5, 6, 7}
    assert (await first.renew()).surplus == set()
    assert set(first.owned) == {0, 1, 2, 3}


async def test_a_lease_written_over_by_another_replica_is_reported_lost(bus: Bus) -> None:
    kv = await bus.kv(DISPATCHER_LEASES_BUCKET)
    leases = PartitionLeases(kv, "me", partitions=2)
    await leases.renew()
    await kv.put("p1", b"someone-else")  # e.g. ours expired and another replica took it

    changes = await leases.renew()
    assert changes.lost == {1} and set(leases.owned) == {0}
