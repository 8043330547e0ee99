"""Provisioning against a real nats-server: idempotent, and conflicts reported, never overwritten."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import StreamConfig

from swarm.bus import Bus, ConsumerSpec, ProvisioningConflict, Reject, Retry, consume
from swarm.contracts import ALL_BUCKETS, ALL_STREAMS, TASKS, Retention, StreamSpec
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration


async def test_second_provision_changes_nothing(bus: Bus) -> None:
    assert await bus.provision() == []
    for spec in ALL_STREAMS:
        info = await bus.js.stream_info(spec.name)
        assert sorted(info.config.subjects) == sorted(spec.subjects)
    for bucket in ALL_BUCKETS:
        assert bucket.name


async def test_first_provision_creates_everything(nats_settings: NatsSettings) -> None:
    bus = await Bus.connect(nats_settings, "test")
    try:
        created = await bus.provision()
        assert set(created) == {s.name for s in ALL_STREAMS} | {b.name for b in ALL_BUCKETS}
    finally:
        await bus.close()


async def test_conflicting_stream_is_reported_not_overwritten(nats_settings: NatsSettings) -> None:
    bus = await Bus.connect(nats_settings, "test")
    try:
        await bus.js.add_stream(StreamConfig(name=TASKS.name, subjects=["something.else"]))
        with pytest.raises(ProvisioningConflict, match="TASKS"):
            await bus.provision(streams=[TASKS], buckets=[])
        info = await bus.js.stream_info(TASKS.name)
        assert info.config.subjects == ["something.else"]
    finally:
        await bus.close()


async def test_settle_acks_retries_and_terminates(bus: Bus) -> None:
    stream = StreamSpec(name="T_SETTLE", subjects=("t.settle.>",), retention=Retention.WORK_QUEUE, description="t")
    await bus.provision(streams=[stream], buckets=[])
    spec = ConsumerSpec(stream=stream, durable="t", filter_subjects=("t.settle.>",), max_deliver=5)
    psub = await bus.pull_subscription(spec)
    for kind in ("ok", "retry", "reject", "garbage"):
        await bus.js.publish(f"t.settle.{kind}", kind.encode())
    seen: list[str] = []
    stop = asyncio.Event()

    async def handler(msg) -> None:  # type: ignore[no-untyped-def]
        kind = msg.subject.rsplit(".", 1)[1]
        seen.append(kind)
        if kind == "retry" and seen.count("retry") < 2:
            raise Retry("later", delay_s=0.1)
        if kind == "reject":
            raise Reject("never")
        if kind == "garbage":
            import json

            json.loads(msg.data)
        if len(seen) >= 5:
            stop.set()

    await asyncio.wait_for(consume(psub, handler, stop, fetch_timeout_s=0.2), 10)
    assert sorted(seen) == ["garbage", "ok", "reject", "retry", "retry"]
    for _ in range(50):  # acks are published without waiting: give the server a moment
        info = await bus.js.stream_info(stream.name)
        if info.state.messages == 0:
            break
        await asyncio.sleep(0.05)
    assert info.state.messages == 0  # acked or terminated: nothing left, nothing redelivered forever


async def test_kv_keys_match_a_pattern_on_the_server_and_skip_deleted_ones(bus: Bus) -> None:
    bucket = ALL_BUCKETS[0]
    assert await bus.kv_keys(bucket, "running.>") == []
    kv = await bus.kv(bucket)
    for key in ("running.p1.a", "running.p1.b", "running.p2.c", "other"):
        await kv.put(key, b"")
    await kv.delete("running.p1.b")
    assert await bus.kv_keys(bucket, "running.p1.*") == ["running.p1.a"]
    assert sorted(await bus.kv_keys(bucket, "running.>")) == ["running.p1.a", "running.p2.c"]
