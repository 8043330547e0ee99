"""Streaming replies, deadlines, priorities and bad input, through a sim gateway on a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from services.gateway.backends import create_engine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.contracts import (
    EVENTS,
    InferenceChunk,
    InferenceEvent,
    InferenceEventBatch,
    InferenceRequest,
    InferenceResponse,
    Subjects,
)
from swarm.inference import DEADLINE_EXCEEDED, InferenceClient, InferenceError, chat
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

CRASH = "CRASH-THE-SIM"
StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def start_gateway(nats_settings: NatsSettings, bus: Bus) -> AsyncIterator[StartGateway]:
    """Start a sim gateway on its own connection, stopped after the test."""
    started: list[tuple[GatewayServer, Bus]] = []

    async def start(**fields: Any) -> GatewayServer:
        settings = GatewaySettings(
            backend="sim", **{"sim_latency_scale": 0, "sim_crash_marker": CRASH, "sim_context_tokens": 512, **fields}
        )
        gateway_bus = await Bus.connect(nats_settings, "gateway-test")
        server = GatewayServer(gateway_bus, create_engine(settings), settings)
        await server.start()
        await gateway_bus.nc.flush()
        started.append((server, gateway_bus))
        return server

    yield start
    for server, gateway_bus in started:
        await server.stop()
        await gateway_bus.close()
        await server.engine.close()


def request(request_id: str, user: str = "Name three rivers.", **fields: Any) -> InferenceRequest:
    return InferenceRequest(request_id=request_id, messages=chat("You are terse.", user), **fields)


async def collect(client: InferenceClient, req: InferenceRequest) -> tuple[list[str], InferenceResponse]:
    items = [item async for item in client.stream(req, timeout_s=10)]
    *deltas, response = items
    assert isinstance(response, InferenceResponse) and all(isinstance(d, str) for d in deltas)
    return deltas, response  # type: ignore[return-value]


# ------------------------------------------------------------------ streaming


async def test_stream_delivers_deltas_in_order_then_the_whole_reply(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway(sim_latency_scale=1.0, sim_ttft_ms=50, sim_tokens_per_s=400, sim_jitter=0)
    client = InferenceClient(bus.nc)
    started = time.perf_counter()
    arrivals: list[float] = []
    deltas: list[str] = []
    response: InferenceResponse | None = None
    async for item in client.stream(request("st-1", max_tokens=40), timeout_s=10):
        if isinstance(item, str):
            arrivals.append(time.perf_counter() - started)
            deltas.append(item)
        else:
            response = item
    assert response is not None and response.ok, response
    assert len(deltas) > 5 and "".join(deltas) == response.content
    assert arrivals[0] < arrivals[-1] - 0.02  # tokens arrive as generated, not all at once
    whole = await client.complete(request("st-1", max_tokens=40), timeout_s=10)
    assert whole.content == response.content  # the sim is deterministic: same text either way


async def test_raw_stream_protocol_chunks_to_the_reply_inbox(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway()
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    await bus.nc.publish(Subjects.INFER, request("st-raw", stream=True).model_dump_json().encode(), reply=inbox)
    chunks = []
    while not chunks or not chunks[-1].done:
        chunks.append(InferenceChunk.model_validate_json((await sub.next_msg(timeout=30)).data))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].response is not None and chunks[-1].response.ok
    assert "".join(c.delta for c in chunks) == chunks[-1].response.content
    await sub.unsubscribe()


async def test_stream_errors_arrive_as_a_final_chunk(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway()
    client = InferenceClient(bus.nc)
    deltas, response = await collect(client, request("st-bad", model="nope"))
    assert deltas == [] and not response.ok and "unknown model" in (response.error or "")
    deltas, response = await collect(client, request("st-crash", user=f"please {CRASH}"))
    assert not response.ok and "engine error: RuntimeError" in (response.error or "")


async def test_overloaded_stream_is_retried_by_the_client(bus: Bus, start_gateway: StartGateway) -> None:
    server = await start_gateway(max_queue=1, sim_latency_scale=1.0, sim_jitter=0)
    client = InferenceClient(bus.nc)
    results = await asyncio.gather(
        *(collect(client, request(f"st-ov-{i}", sim_latency_ms=60)) for i in range(4))
    )
    assert all(response.ok for _, response in results)
    assert server.rejected_count > 0


# ------------------------------------------------------------------ deadlines and priorities


async def until_running(server: GatewayServer) -> None:
    """Until the blocking request holds the gateway's slot (a fixed sleep is too short on a busy machine)."""
    for _ in range(1000):
        if server.running:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the blocking request never started")


async def until_admitted(server: GatewayServer, n: int) -> None:
    """Until `n` requests are running or queued at the gateway."""
    for _ in range(1000):
        if server.in_flight >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{server.in_flight} requests admitted, {n} expected")


async def test_deadline_passed_while_queued_is_answered_without_running(bus: Bus, start_gateway: StartGateway) -> None:
    server = await start_gateway(slots=1, sim_latency_scale=1.0, sim_jitter=0)
    client = InferenceClient(bus.nc)
    blocker = asyncio.create_task(client.complete(request("dl-block", sim_latency_ms=3000), timeout_s=15))
    await until_running(server)
    started = time.perf_counter()
    late = await client.complete(request("dl-late", sim_latency_ms=10, deadline_ms=100), timeout_s=10)
    waited = time.perf_counter() - started
    assert not late.ok and (late.error or "").startswith(DEADLINE_EXCEEDED) and "queued" in (late.error or "")
    # Answered at its deadline, not when the slot freed up (the blocker holds it for 3 s).
    assert waited > 0.08 and not blocker.done()
    assert (await blocker).ok
    assert server.expired_count == 1 and server.served_count == 1  # the late one never ran


async def test_deadline_passed_while_running_cancels_the_generation(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway(sim_latency_scale=1.0)
    client = InferenceClient(bus.nc)
    response = await client.complete(request("dl-run", sim_latency_ms=2000, deadline_ms=100), timeout_s=10)
    assert not response.ok and "while running" in (response.error or "")


async def test_client_timeout_becomes_the_deadline(bus: Bus, start_gateway: StartGateway) -> None:
    server = await start_gateway(slots=1, sim_latency_scale=1.0, sim_jitter=0)
    client = InferenceClient(bus.nc)
    blocker = asyncio.create_task(client.complete(request("ct-block", sim_latency_ms=500), timeout_s=10))
    await until_running(server)
    with pytest.raises(InferenceError):
        await client.complete(request("ct-late", sim_latency_ms=10), timeout_s=0.2)
    assert (await blocker).ok
    await asyncio.sleep(0.05)
    assert server.expired_count == 1 and server.served_count == 1


async def test_planner_and_aggregator_calls_go_before_worker_calls(bus: Bus, start_gateway: StartGateway) -> None:
    server = await start_gateway(slots=1, sim_latency_scale=1.0, sim_jitter=0)
    client = InferenceClient(bus.nc)
    finished: list[str] = []

    async def call(request_id: str, **fields: Any) -> None:
        response = await client.complete(request(request_id, **{"sim_latency_ms": 30, **fields}), timeout_s=10)
        assert response.ok, response.error
        finished.append(request_id)

    blocker = asyncio.create_task(call("blocker", sim_latency_ms=300))
    await until_running(server)
    tasks = [asyncio.create_task(call(f"worker-{i}", caller="worker")) for i in range(3)]
    await until_admitted(server, 4)
    tasks.append(asyncio.create_task(call("aggregator", caller="aggregator")))
    tasks.append(asyncio.create_task(call("planner", caller="planner")))
    tasks.append(asyncio.create_task(call("urgent-worker", caller="worker", priority=0)))
    await asyncio.gather(blocker, *tasks)
    assert finished[0] == "blocker"
    assert set(finished[1:4]) == {"aggregator", "planner", "urgent-worker"}
    assert finished[1:4] == ["aggregator", "planner", "urgent-worker"]  # first come first served within a class
    assert finished[4:] == ["worker-0", "worker-1", "worker-2"]
    assert server.health()["queued"] == 0


# ------------------------------------------------------------------ bad input


async def test_bad_input_gets_clear_errors_and_the_gateway_keeps_serving(bus: Bus, start_gateway: StartGateway) -> None:
    server = await start_gateway()
    client = InferenceClient(bus.nc)
    unknown = await client.complete(request("bad-model", model="llama-9000"))
    assert "unknown model 'llama-9000'" in (unknown.error or "")

    too_long = await client.complete(request("bad-long", user="word " * 3000))
    assert not too_long.ok and "prompt too long" in (too_long.error or "") and "512" in (too_long.error or "")

    invalid = await client.complete(request("bad-schema", json_schema={"type": 12}))
    assert not invalid.ok and (invalid.error or "").startswith("invalid json_schema: json_schema.type: 12")

    nested = await client.complete(
        request("bad-nested", json_schema={"type": "object", "properties": {"a": {"type": "array", "items": 3}}})
    )
    assert "json_schema.properties.a.items" in (nested.error or "")

    crashed = await client.complete(request("bad-crash", user=f"now {CRASH}"))
    assert not crashed.ok and (crashed.error or "").startswith("engine error: RuntimeError: sim engine crashed")

    results = await asyncio.gather(*(client.complete(request(f"after-{i}")) for i in range(20)))
    assert all(r.ok for r in results)
    health = server.health()
    assert health["in_flight"] == 0 and health["served_count"] == 20 and health["failed_count"] == 5


async def test_streamed_and_whole_calls_record_their_time_to_first_token(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway(sim_latency_scale=1.0, sim_ttft_ms=50, sim_tokens_per_s=400, sim_jitter=0)
    client = InferenceClient(bus.nc)
    await collect(client, request("st-ttft", max_tokens=40))
    await client.complete(request("whole-ttft", max_tokens=40))
    psub = await bus.js.pull_subscribe(Subjects.inference_event_batch(), stream=EVENTS.name)
    by_id: dict[str, InferenceEvent] = {}
    for _ in range(50):
        try:
            msgs = await psub.fetch(10, timeout=1)
        except TimeoutError:
            continue
        by_id |= {e.event_id: e for m in msgs for e in InferenceEventBatch.model_validate_json(m.data).events}
        if {"st-ttft", "whole-ttft"} <= by_id.keys():
            break
    streamed = by_id["st-ttft"]
    assert streamed.ttft_ms is not None and 40 <= streamed.ttft_ms < streamed.queue_ms + streamed.duration_ms
    whole = by_id["whole-ttft"]  # a whole reply times the engine's first token too
    assert whole.ttft_ms is not None and 40 <= whole.ttft_ms < whole.queue_ms + whole.duration_ms


# ------------------------------------------------------------------ cancel


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_cancelled_caller_stops_its_running_and_queued_calls_and_frees_the_slot(
    bus: Bus, start_gateway: StartGateway
) -> None:
    # Two gateway replicas: the cancel reaches the one that holds the call, whichever it is.
    servers = [await start_gateway(sim_latency_scale=1.0, slots=1) for _ in range(2)]
    client = InferenceClient(bus.nc)
    long = {"sim_latency_ms": 60_000.0}
    calls = [asyncio.create_task(client.complete(request(f"long-{i}", **long), timeout_s=120)) for i in range(3)]
    await until(lambda: sum(s.in_flight for s in servers) == 3, "three calls admitted")
    # One slot each: at least one of the three waits queued behind a running one.
    assert sum(s.running for s in servers) in (1, 2)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    await until(lambda: sum(s.in_flight for s in servers) == 0, "every call stopped, none left running")
    assert sum(s.cancelled_count for s in servers) == 3
    # The slots are free: a next call runs at once instead of waiting out a minute of generation.
    after = await client.complete(request("after", sim_latency_ms=1.0), timeout_s=30)
    assert after.ok


async def test_malformed_and_unknown_cancels_change_nothing(bus: Bus, start_gateway: StartGateway) -> None:
    server = await start_gateway(sim_latency_scale=1.0, slots=1)
    client = InferenceClient(bus.nc)
    call = asyncio.create_task(client.complete(request("kept", sim_latency_ms=300.0), timeout_s=30))
    await until(lambda: server.running == 1, "the call running")
    await bus.nc.publish(Subjects.INFER_CANCEL, b"\x00 not json")
    await bus.nc.publish(Subjects.INFER_CANCEL, b'{"request_id": "someone-else"}')
    assert (await call).ok and server.cancelled_count == 0


async def test_two_gateway_replicas_share_the_load(bus: Bus, start_gateway: StartGateway) -> None:
    servers = [await start_gateway(sim_latency_scale=1.0) for _ in range(2)]
    client = InferenceClient(bus.nc)
    replies = await asyncio.gather(
        *(client.complete(request(f"shared-{i}", sim_latency_ms=20.0), timeout_s=30) for i in range(60))
    )
    assert all(r.ok for r in replies)
    served = [s.served_count for s in servers]
    assert sum(served) == 60 and min(served) > 0, served  # the queue group spreads calls over both
