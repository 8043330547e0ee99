"""The bus on a 3-node JetStream cluster when a node goes away: pull requests survive, lost acks are reported."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from swarm.bus import Bus, ConsumerSpec, PeersUnavailable, PublishNotAcknowledged
from swarm.contracts import ALL_BUCKETS, ALL_STREAMS, RESULTS, StepEvent, Subjects
from swarm.ops.natsserver import NatsServer, node_status, start_cluster
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

# Far longer than any wait below: a reader that waits its request out fails the test.
LONG_REQUEST_S = 60.0
CONSUMER = ConsumerSpec(stream=RESULTS, durable="cluster-test", filter_subjects=(Subjects.result("t", "run-1"),))


def settings_for(*servers: NatsServer) -> NatsSettings:
    return NatsSettings(url=",".join(s.url for s in servers), stream_replicas=3)


async def first_message(puller: object, timeout_s: float) -> bytes:
    """Fetch as `consume` does (asking again after a request ends), until one message arrives."""

    async def fetching() -> bytes:
        while True:
            try:
                return (await puller.fetch(1, timeout=LONG_REQUEST_S))[0].data  # type: ignore[attr-defined]
            except TimeoutError:
                continue

    return await asyncio.wait_for(fetching(), timeout_s)


async def test_provisioning_waits_for_every_replicated_stream_leader_and_replica(nats_cluster: list[NatsServer]) -> None:
    bus = await Bus.connect(settings_for(*nats_cluster), "test")
    try:
        await bus.provision()
        for spec in ALL_STREAMS:
            info = await bus.js.stream_info(spec.name)
            assert info.config.num_replicas == 3 and info.cluster is not None and info.cluster.leader
            replicas = info.cluster.replicas or []
            assert len(replicas) == 2 and all(r.current and not r.offline for r in replicas), replicas
        # The first KV put of a starting service needs a leader at once (it failed with "no response").
        kv = await bus.kv(ALL_BUCKETS[0])
        assert await kv.put("k", b"v") > 0
        # What `swarm status` shows: one meta leader, every stream led by exactly one healthy node.
        # Health is each node's own view, polled over HTTP: a loaded machine may answer it late, so poll a while.
        await asyncio.gather(*(asyncio.to_thread(s.wait_healthy, 15.0) for s in nats_cluster))
        status = node_status({s.name: s.monitor_port for s in nats_cluster})
        assert sum(bool(row["meta_leader"]) for row in status.values()) == 1
        assert all(row["healthy"] for row in status.values()), status
        led = [stream for row in status.values() for stream in row["leads"]]  # type: ignore[attr-defined]
        assert sorted(led) == sorted([*(s.name for s in ALL_STREAMS), *(b.stream for b in ALL_BUCKETS)])
    finally:
        await bus.close()



async def test_provisioning_waits_a_while_for_a_peer_not_yet_heard_from_then_names_what_it_could_not_place(
    nats_cluster: list[NatsServer],
) -> None:
    # A replicated stream is placed on every peer, and the meta leader places none on a peer it has not heard
    # from since it started: "no suitable peers for placement" (CI saw it right after the cluster started).
    # Here the cluster restarts with one node late. Provisioning waits for it, bounded, then names the stream.
    late, *early = nats_cluster
    for server in nats_cluster:
        server.stop()
    start_cluster(early)
    url = ",".join(s.url for s in early)
    impatient = await Bus.connect(NatsSettings(url=url, stream_replicas=3, request_timeout_s=1.0), "impatient")
    patient = await Bus.connect(NatsSettings(url=url, stream_replicas=3), "patient")
    try:
        with pytest.raises(PeersUnavailable, match=f"stream {RESULTS.name}: no suitable peers"):
            await impatient.provision(streams=(RESULTS,), buckets=())
        created, _ = await asyncio.gather(  # the late node starts while provisioning waits for it
            patient.provision(streams=(RESULTS,), buckets=(ALL_BUCKETS[0],)), launch_after(late, 1.0)
        )
        assert created == [RESULTS.name, ALL_BUCKETS[0].name]
        info = await patient.js.stream_info(RESULTS.name)
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await impatient.close()
        await patient.close()


async def launch_after(server: NatsServer, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    server.launch()


async def test_pull_request_survives_its_consumer_leader_and_reader_node_dying(nats_cluster: list[NatsServer]) -> None:
    admin = await Bus.connect(settings_for(*nats_cluster), "admin")
    await admin.provision(streams=(RESULTS,), buckets=())
    await admin.ensure_consumer(CONSUMER)
    leader_name = (await admin.js.consumer_info(RESULTS.name, CONSUMER.durable)).cluster.leader  # type: ignore[union-attr]
    leader = next(s for s in nats_cluster if s.name == leader_name)
    others = [s for s in nats_cluster if s is not leader]
    # The reader talks to the consumer's leader only; the server keeps its open request when that node dies
    # (the Puller does not ask again before the request expires: a lost request would fail this test).
    reader = await Bus.connect(NatsSettings(url=leader.url, stream_replicas=3), "reader")
    publisher = await Bus.connect(settings_for(*others), "publisher")
    try:
        puller = await reader.pull_subscription(CONSUMER)
        fetching = asyncio.create_task(first_message(puller, timeout_s=LONG_REQUEST_S / 2))
        await asyncio.sleep(0.5)  # the request is open on the leader
        leader.kill()
        await asyncio.wait_for(reader.wait_reconnected(), 20)  # to a node it learnt from the cluster
        event = StepEvent(event_id="e1", run_id="run-1", tenant="t", step_id="s1", agent_id="a1", attempt=1,
                          kind="succeeded")  # fmt: skip
        for _ in range(100):  # until the stream has a new leader
            try:
                await publisher.publish(Subjects.result("t", "run-1"), event)
                break
            except (PublishNotAcknowledged, nats.errors.Error):  # no leader yet: no responders or no ack
                await asyncio.sleep(0.2)
        assert StepEvent.model_validate_json(await fetching).event_id == "e1"
    finally:
        for bus in (reader, publisher, admin):
            await bus.close()


async def test_publish_acks_lost_with_the_node_fail_at_reconnect(nats_cluster: list[NatsServer]) -> None:
    node = nats_cluster[0]
    bus = await Bus.connect(NatsSettings(url=node.url, request_timeout_s=LONG_REQUEST_S), "publisher")
    # A subscriber that never answers stands for a stream whose ack went down with the node.
    sink = await bus.nc.subscribe("swarm.test.sink")
    try:
        await bus.publish_nowait("swarm.test.sink", StepEvent(
            event_id="e1", run_id="r", tenant="t", step_id="s", agent_id="a", attempt=1, kind="succeeded"))  # fmt: skip
        await bus.nc.flush()
        node.kill()
        await asyncio.wait_for(bus.wait_reconnected(), 20)
        with pytest.raises(PublishNotAcknowledged):  # at once, not after LONG_REQUEST_S
            await asyncio.wait_for(bus.flush_publishes(), LONG_REQUEST_S / 4)
    finally:
        await sink.unsubscribe()
        await bus.close()
