"""The gateway served in-process (sim backend) on a real nats-server, called through InferenceClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jsonschema
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from services.gateway.__main__ import main as gateway_main
from services.gateway.backends import create_engine
from services.gateway.server import RETRY_AFTER_HEADER, GatewayServer
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.contracts import EVENTS, InferenceEventBatch, InferenceRequest, InferenceResponse, Subjects
from swarm.inference import OVERLOADED, InferenceClient, chat
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

StartGateway = Callable[..., Awaitable[tuple[GatewayServer, Bus]]]


@pytest.fixture
async def start_gateway(nats_settings: NatsSettings, bus: Bus) -> AsyncIterator[StartGateway]:
    """Start a sim gateway on its own connection (as its process would), stopped after the test."""
    started: list[tuple[GatewayServer, Bus]] = []

    async def start(**fields: Any) -> tuple[GatewayServer, Bus]:
        settings = GatewaySettings(backend="sim", **{"sim_latency_scale": 0, **fields})
        gateway_bus = await Bus.connect(nats_settings, "gateway-test")
        server = GatewayServer(gateway_bus, create_engine(settings), settings)
        await server.start()
        await gateway_bus.nc.flush()  # the subscription is known to the server before anyone calls
        started.append((server, gateway_bus))
        return server, gateway_bus

    yield start
    for server, gateway_bus in started:
        await server.stop()
        await gateway_bus.close()
        await server.engine.close()


def request(request_id: str, **fields: Any) -> InferenceRequest:
    return InferenceRequest(
        request_id=request_id, messages=chat("You are terse.", "Name three rivers."), **fields
    )


async def test_completion(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway()
    response = await InferenceClient(bus.nc).complete(
        request("call-1", run_id="run-1", step_id="s1"), timeout_s=10
    )
    assert response.ok, response.error
    assert response.request_id == "call-1"
    assert response.content and response.backend == "sim" and response.model == "sim"
    assert response.prompt_tokens > 0 and response.completion_tokens > 0


async def test_json_schema_completion_validates(bus: Bus, start_gateway: StartGateway) -> None:
    await start_gateway()
    schema = {"type": "object", "properties": {"rivers": {"type": "array", "items": {"type": "string", "maxLength": 20},
              "minItems": 3, "maxItems": 3}}, "required": ["rivers"], "additionalProperties": False}  # fmt: skip
    response = await InferenceClient(bus.nc).complete(request("call-2", json_schema=schema), timeout_s=10)
    assert response.ok, response.error
    jsonschema.validate(json.loads(response.content), schema)


async def raw_request(bus: Bus, payload: bytes) -> Msg:
    """A request outside InferenceClient, retried like it while the gateway's queue group is not visible yet."""
    for _ in range(50):
        try:
            return await bus.nc.request(Subjects.INFER, payload, timeout=5)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.1)
    raise AssertionError("no gateway answered for 5 s")


async def test_bad_requests_get_error_replies_and_the_gateway_keeps_serving(
    bus: Bus, start_gateway: StartGateway
) -> None:
    await start_gateway()
    reply = await raw_request(bus, b"{not json")
    garbage = InferenceResponse.model_validate_json(reply.data)
    assert not garbage.ok and garbage.error is not None and garbage.error.startswith("invalid request")

    reply = await raw_request(bus, b'{"request_id": "bad-1", "messages": []}')
    invalid = InferenceResponse.model_validate_json(reply.data)
    assert not invalid.ok and invalid.request_id == "bad-1" and "messages" in (invalid.error or "")

    client = InferenceClient(bus.nc)
    unknown = await client.complete(request("bad-2", model="gpt-17"), timeout_s=10)
    assert not unknown.ok and "unknown model 'gpt-17'" in (unknown.error or "")

    unsatisfiable = await client.complete(
        request("bad-3", json_schema={"type": "string", "minLength": 9, "maxLength": 1})
    )
    assert not unsatisfiable.ok and "json_schema" in (unsatisfiable.error or "")

    assert (await client.complete(request("good-1"), timeout_s=10)).ok


async def test_overload_is_answered_at_once_with_retry_after(bus: Bus, start_gateway: StartGateway) -> None:
    server, _ = await start_gateway(max_queue=1, sim_latency_scale=1.0)
    # The call in service takes 3 s: the other four arrive while it runs, however slow the machine.
    payloads = [request(f"burst-{i}", sim_latency_ms=3000).model_dump_json().encode() for i in range(5)]
    loop = asyncio.get_running_loop()

    async def answered(payload: bytes) -> tuple[Msg, float]:
        reply = await bus.nc.request(Subjects.INFER, payload, timeout=15)
        return reply, loop.time()

    replies = await asyncio.gather(*(answered(p) for p in payloads))
    responses = [(InferenceResponse.model_validate_json(reply.data), reply, at) for reply, at in replies]
    served = [at for response, _, at in responses if response.ok]
    rejected = [(response, reply, at) for response, reply, at in responses if not response.ok]
    assert len(served) == 1 and len(rejected) == 4
    for response, reply, at in rejected:
        assert response.error is not None and response.error.startswith(OVERLOADED)
        assert reply.headers is not None and float(reply.headers[RETRY_AFTER_HEADER]) > 0
        assert at < served[0]  # at once: not after waiting for the call in service
    assert server.rejected_count == 4

    # The client backs off as told and gets through once the queue frees up.
    client = InferenceClient(bus.nc)
    results = await asyncio.gather(
        *(client.complete(request(f"retry-{i}", sim_latency_ms=50), 20) for i in range(4))
    )
    assert all(r.ok for r in results)


async def test_every_call_lands_in_the_events_stream_in_batches(bus: Bus, start_gateway: StartGateway) -> None:
    server, gateway_bus = await start_gateway()
    client = InferenceClient(bus.nc)
    await asyncio.gather(
        *(client.complete(request(f"ev-{i}", run_id="run-ev", step_id=f"s{i}")) for i in range(20))
    )
    await client.complete(request("ev-bad", model="nope"))
    await server.flush_events()
    await gateway_bus.flush_publishes()

    psub = await bus.js.pull_subscribe(Subjects.inference_event_batch(), stream=EVENTS.name)
    batches = [InferenceEventBatch.model_validate_json(m.data) for m in await psub.fetch(21, timeout=1)]
    assert len(batches) < 21  # fewer messages than calls
    by_id = {e.event_id: e for batch in batches for e in batch.events}
    assert set(by_id) == {f"ev-{i}" for i in range(20)} | {"ev-bad"}
    assert all(by_id[f"ev-{i}"].ok and by_id[f"ev-{i}"].step_id == f"s{i}" for i in range(20))
    assert by_id["ev-0"].run_id == "run-ev" and by_id["ev-0"].completion_tokens > 0
    assert not by_id["ev-bad"].ok and "unknown model" in by_id["ev-bad"].error


async def test_service_main_serves_answers_health_and_drains_on_stop(
    nats_settings: NatsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARM_NATS_URL", nats_settings.url)
    monkeypatch.setenv("SWARM_GATEWAY_BACKEND", "sim")
    stop = asyncio.Event()
    service = asyncio.create_task(gateway_main(stop))
    nc = await nats.connect(nats_settings.url)
    try:
        client = InferenceClient(nc)
        assert (await client.complete(request("main-1", sim_latency_ms=1), timeout_s=20)).ok
        health = json.loads((await nc.request(Subjects.health("gateway"), b"", timeout=5)).data)
        assert health["service"] == "gateway" and health["backend"] == "sim"

        in_flight = asyncio.create_task(client.complete(request("main-2", sim_latency_ms=300), timeout_s=20))
        await asyncio.sleep(0.1)
        stop.set()
        assert (await in_flight).ok  # admitted before the stop: finished and answered
        await asyncio.wait_for(service, 10)
    finally:
        stop.set()
        await nc.close()
