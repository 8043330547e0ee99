"""Provisioning against a real nats-server: idempotent, and conflicts reported, never overwritten."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, StreamConfig
from nats.js.errors import BucketNotFoundError

from swarm.bus import Bus, ConsumerSpec, ProvisioningConflict, Reject, Retry, consume, consume_batches
from swarm.contracts import (
    ALL_BUCKETS,
    ALL_STREAMS,
    DISPATCHER_LEASES_BUCKET,
    MESSAGE_BODY_MAX_BYTES,
    OUTPUTS_BUCKET,
    PAYLOADS_STORE,
    TASKS,
    BucketSpec,
    Keys,
    Retention,
    StreamSpec,
)
from swarm.payloads import Payloads
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


async def test_conflicting_bucket_is_reported_not_overwritten(nats_settings: NatsSettings) -> None:
    bus = await Bus.connect(nats_settings, "test")
    try:
        # Leases that never expire would keep a dead replica's partitions from every other replica.
        await bus.js.create_key_value(KeyValueConfig(bucket=DISPATCHER_LEASES_BUCKET.name, ttl=3600, history=5))
        with pytest.raises(ProvisioningConflict, match=f"bucket {DISPATCHER_LEASES_BUCKET.name}.*history.*ttl"):
            await bus.provision(streams=[], buckets=[DISPATCHER_LEASES_BUCKET])
        status = await (await bus.js.key_value(DISPATCHER_LEASES_BUCKET.name)).status()
        assert (status.history, status.ttl) == (5, 3600)
    finally:
        await bus.close()


async def test_conflicting_consumers_are_reported_not_overwritten(bus: Bus) -> None:
    stream = StreamSpec(name="T_CONSUMERS", subjects=("t.c.>",), retention=Retention.LIMITS, description="t")
    await bus.provision(streams=[stream], buckets=[])
    await bus.js.add_consumer(stream.name, ConsumerConfig(durable_name="other", filter_subject="t.c.other"))
    await bus.js.add_consumer(
        stream.name, ConsumerConfig(durable_name="all", filter_subject="t.c.all", ack_policy=AckPolicy.ALL)
    )
    with pytest.raises(ProvisioningConflict, match=r"T_CONSUMERS/other filters \['t.c.other'\]"):
        await bus.ensure_consumer(ConsumerSpec(stream=stream, durable="other", filter_subjects=("t.c.mine",)))
    with pytest.raises(ProvisioningConflict, match="explicit acks"):
        await bus.ensure_consumer(ConsumerSpec(stream=stream, durable="all", filter_subjects=("t.c.all",)))
    assert (await bus.js.consumer_info(stream.name, "other")).config.filter_subject == "t.c.other"
    assert (await bus.js.consumer_info(stream.name, "all")).config.ack_policy == AckPolicy.ALL
    await bus.ensure_consumer(ConsumerSpec(stream=stream, durable="mine", filter_subjects=("t.c.mine",)))
    await bus.ensure_consumer(ConsumerSpec(stream=stream, durable="mine", filter_subjects=("t.c.mine",)))  # again: fine


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


async def _drained(bus: Bus, stream: str) -> int:
    """Messages left in a work-queue stream once acks and terms have landed."""
    for _ in range(100):
        info = await bus.js.stream_info(stream)
        if info.state.messages == 0:
            break
        await asyncio.sleep(0.05)
    return info.state.messages


async def test_a_poison_message_is_terminated_after_bounded_deliveries_and_the_loop_goes_on(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    stream = StreamSpec(name="T_POISON", subjects=("t.poison.>",), retention=Retention.WORK_QUEUE, description="t")
    await bus.provision(streams=[stream], buckets=[])
    spec = ConsumerSpec(stream=stream, durable="t", filter_subjects=("t.poison.>",), give_up_after=3)
    psub = await bus.pull_subscription(spec)
    await bus.js.publish("t.poison.bad", b"boom")
    for i in range(3):
        await bus.js.publish(f"t.poison.ok{i}", b"fine")
    attempts: list[str] = []
    stop = asyncio.Event()

    async def handler(msg) -> None:  # type: ignore[no-untyped-def]
        kind = msg.subject.rsplit(".", 1)[1]
        attempts.append(kind)
        if attempts.count("bad") >= 3 and len(set(attempts)) == 4:
            stop.set()
        if kind == "bad":
            raise KeyError("a bug this message triggers")

    with caplog.at_level("INFO", logger="swarm.bus"):
        await asyncio.wait_for(consume(psub, handler, stop, fetch_timeout_s=0.2, give_up_after=3), 30)
    assert attempts.count("bad") == 3  # bounded: delivered three times, then terminated
    assert sorted(set(attempts)) == ["bad", "ok0", "ok1", "ok2"]
    assert await _drained(bus, stream.name) == 0
    failures = [r for r in caplog.records if "t.poison.bad" in r.getMessage()]
    assert [r.levelname for r in failures] == ["ERROR", "ERROR"]  # the first failure (with traceback), the give-up
    assert "gave up" in failures[-1].getMessage()


async def test_a_batch_handler_failing_on_one_message_settles_the_rest(bus: Bus) -> None:
    stream = StreamSpec(name="T_BATCH", subjects=("t.batch.>",), retention=Retention.WORK_QUEUE, description="t")
    await bus.provision(streams=[stream], buckets=[])
    spec = ConsumerSpec(stream=stream, durable="t", filter_subjects=("t.batch.>",))
    for i in range(5):
        await bus.js.publish(f"t.batch.m{i}", b"poison" if i == 2 else b"fine")
    handled: list[str] = []
    stop = asyncio.Event()

    async def handler(msgs) -> None:  # type: ignore[no-untyped-def]
        if any(m.data == b"poison" for m in msgs):
            raise ZeroDivisionError("the batch holds a message this handler cannot take")
        for m in msgs:
            handled.append(m.subject)
            await m.ack()
        if len(handled) == 4:
            stop.set()

    psub = await bus.pull_subscription(spec)
    await asyncio.wait_for(consume_batches(psub, handler, stop, batch=10, fetch_timeout_s=0.2, give_up_after=2), 30)
    assert sorted(handled) == [f"t.batch.m{i}" for i in (0, 1, 3, 4)]
    assert await _drained(bus, stream.name) == 1  # the poison waits for its (last) redelivery
    stop2 = asyncio.Event()
    asyncio.get_running_loop().call_later(4.0, stop2.set)
    await consume_batches(await bus.pull_subscription(spec), handler, stop2, batch=10, fetch_timeout_s=0.2, give_up_after=2)
    assert await _drained(bus, stream.name) == 0  # given up on its second delivery, terminated


async def test_a_dead_loop_is_restarted_and_shown_in_health(bus: Bus) -> None:
    stop = asyncio.Event()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("died once")
        await stop.wait()

    bus.loops.RESTART_DELAY_S = 0.1  # type: ignore[misc]
    task = asyncio.create_task(bus.loops.run("flaky", flaky, stop))
    for _ in range(100):
        if runs == 2:
            break
        await asyncio.sleep(0.02)
    details = bus.loops.details()
    assert runs == 2 and details["healthy"] is True
    assert details["loops"]["flaky"]["restarts_count"] == 1
    assert "died once" in details["loops"]["flaky"]["last_error"]
    stop.set()
    await task
    assert "flaky" not in bus.loops.details()["loops"]  # ended on purpose: not expected any more


@asynccontextmanager
async def stream_info_requests(
    nats_settings: NatsSettings,
) -> AsyncIterator[tuple[Bus, Callable[[], Awaitable[list[str]]]]]:
    """A fresh Bus (nothing cached), and what gives the JetStream STREAM.INFO requests the real server has
    seen since (both connections flushed first)."""
    seen: list[str] = []
    watcher = await Bus.connect(nats_settings, "test-watcher")
    fresh = await Bus.connect(nats_settings, "test-fresh")
    try:

        async def count(msg: Msg) -> None:
            seen.append(msg.subject)

        async def requests() -> list[str]:
            await fresh.nc.flush()
            await watcher.nc.flush()
            await asyncio.sleep(0.05)  # the watcher's callback task has taken what the flush brought
            return seen

        await watcher.nc.subscribe("$JS.API.STREAM.INFO.>", cb=count)
        await watcher.nc.flush()
        yield fresh, requests
    finally:
        await fresh.close()
        await watcher.close()


async def test_concurrent_first_lookups_of_a_bucket_share_one_request(bus: Bus, nats_settings: NatsSettings) -> None:
    # The first wave of a run's steps (150 at once on a worker) asks for the memory bucket together: one
    # JetStream API request must serve them all, not one each. Counted on the real server's API subject.
    async with stream_info_requests(nats_settings) as (fresh, requests):
        handles = await asyncio.gather(*(fresh.kv(DISPATCHER_LEASES_BUCKET) for _ in range(50)))
        assert len({id(handle) for handle in handles}) == 1
        assert await requests() == [f"$JS.API.STREAM.INFO.KV_{DISPATCHER_LEASES_BUCKET.name}"]
        assert await fresh.kv(DISPATCHER_LEASES_BUCKET) is handles[0]  # cached after
        missing = BucketSpec(name="NO_SUCH_BUCKET", description="never created")
        for _ in range(2):  # a failed lookup is not cached: each later call asks again
            with pytest.raises(BucketNotFoundError):
                await fresh.kv(missing)
        assert (await requests()).count("$JS.API.STREAM.INFO.KV_NO_SUCH_BUCKET") == 2


async def test_concurrent_first_reads_of_an_object_store_share_one_lookup(bus: Bus, nats_settings: NatsSettings) -> None:
    # A wave of steps whose inputs went by reference resolves them together: one object store lookup for all.
    key = Keys.output("acme", "r-objects", "s1")
    data = b"x" * (MESSAGE_BODY_MAX_BYTES + 1)
    assert await Payloads(bus).put(key, data)  # by reference
    marker = (await (await bus.kv(OUTPUTS_BUCKET)).get(key)).value or b""
    async with stream_info_requests(nats_settings) as (fresh, requests):
        values = await asyncio.gather(*(Payloads(fresh).resolve(marker) for _ in range(30)))
        assert values == [data] * 30
        assert await requests() == [f"$JS.API.STREAM.INFO.OBJ_{PAYLOADS_STORE.name}"]


async def test_a_lingering_reader_takes_a_steady_stream_in_bursts_and_loses_nothing(bus: Bus) -> None:
    """The recorder's read: 300 messages published over ~1.5 s reach a reader lingering 0.5 s between reads
    in a handful of handler calls (once per message without the linger), every one of them handled once;
    and while it lingers no pull request is open, so nothing is pushed to it message by message."""
    stream = StreamSpec(name="T_LINGER", subjects=("t.linger.>",), retention=Retention.WORK_QUEUE, description="t")
    await bus.provision(streams=[stream], buckets=[])
    spec = ConsumerSpec(stream=stream, durable="t", filter_subjects=("t.linger.>",))
    handled: list[bytes] = []
    calls = 0
    waiting_while_lingering: list[int] = []
    stop = asyncio.Event()

    async def handler(msgs: list[Msg]) -> None:
        nonlocal calls
        calls += 1
        for m in msgs:
            handled.append(m.data)
            await m.ack()

    def linger_s() -> float:
        return 0.5

    async def produce() -> None:
        for i in range(300):
            await bus.js.publish(f"t.linger.m{i}", str(i).encode())
            if i % 20 == 19:
                await asyncio.sleep(0.1)
                if calls:  # the reader is lingering or reading a burst: it holds no open request
                    waiting_while_lingering.append((await bus.js.consumer_info(stream.name, "t")).num_waiting)

    psub = await bus.pull_subscription(spec)
    reader = asyncio.create_task(
        consume_batches(psub, handler, stop, batch=1000, fetch_timeout_s=0.2, linger_s=linger_s)
    )
    await produce()
    for _ in range(100):
        if len(handled) == 300:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(reader, 5)
    assert sorted(handled, key=int) == [str(i).encode() for i in range(300)]  # each once, none lost
    assert calls <= 8, f"{calls} reads for 300 messages over ~1.5 s"
    assert waiting_while_lingering and max(waiting_while_lingering) <= 1
    assert waiting_while_lingering.count(0) >= len(waiting_while_lingering) // 2
    assert await _drained(bus, stream.name) == 0


async def test_fetch_ready_takes_what_the_consumer_holds_in_one_read(bus: Bus) -> None:
    stream = StreamSpec(name="T_READY", subjects=("t.ready.>",), retention=Retention.WORK_QUEUE, description="t")
    await bus.provision(streams=[stream], buckets=[])
    psub = await bus.pull_subscription(ConsumerSpec(stream=stream, durable="t", filter_subjects=("t.ready.>",)))
    assert await psub.fetch_ready(100, timeout=1.0) == []  # nothing there: answered at once, not at the timeout
    for i in range(50):
        await bus.js.publish(f"t.ready.m{i}", str(i).encode())
    first = await psub.fetch_ready(30, timeout=1.0)
    rest = await psub.fetch_ready(100, timeout=1.0)
    assert [m.data for m in first + rest] == [str(i).encode() for i in range(50)]
    assert len(first) == 30
    assert (await bus.js.consumer_info(stream.name, "t")).num_waiting == 0
    for m in first + rest:
        await m.ack()
    await psub.unsubscribe()
