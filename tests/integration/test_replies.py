"""Replies on one wildcard inbox (swarm.bus.ReplyInbox): JetStream publish acks and inference requests."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError

from swarm.bus import Bus, PublishNotAcknowledged
from swarm.contracts import RUNS, InferenceRequest, InferenceResponse, RunCancelRequested, Subjects
from swarm.inference import InferenceClient, chat
from swarm.ops.natsserver import NatsServer
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration


async def test_publishes_are_acked_each_by_its_own_reply(bus: Bus) -> None:
    requests = [RunCancelRequested(run_id=f"r{i}", tenant="t", reason="x") for i in range(50)]
    for i, request in enumerate(requests):
        await bus.publish_nowait(Subjects.run_event("t", f"r{i}", "cancel"), request)
    await bus.flush_publishes()
    await bus.publish(Subjects.run_event("t", "r50", "cancel"), requests[0])
    for i in range(51, 54):
        await bus.publish_bytes(Subjects.run_event("t", f"r{i}", "cancel"), b"{}")
    assert (await bus.js.stream_info(RUNS.name)).state.messages == 54
    assert bus.acks.waiting == {}  # nothing left waiting


async def test_a_publish_no_stream_takes_fails_at_once(bus: Bus) -> None:
    with pytest.raises(NoStreamResponseError):
        await bus.publish("nobody.listens.here", RunCancelRequested(run_id="r", tenant="t", reason="x"))
    await bus.publish_nowait("nobody.listens.here", RunCancelRequested(run_id="r", tenant="t", reason="x"))
    with pytest.raises(PublishNotAcknowledged, match="1 of 1"):
        await bus.flush_publishes()


async def test_an_inference_request_in_flight_is_sent_again_after_a_reconnect(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = NatsServer(store_dir=tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    bus = await Bus.connect(NatsSettings(url=server.url), "test")
    received: list[str] = []
    first_request = asyncio.Event()

    async def gateway(msg: Msg) -> None:  # silent on the first request: its reply is lost with the server
        received.append(InferenceRequest.model_validate_json(msg.data).request_id)
        first_request.set()
        if len(received) > 1:
            await msg.respond(InferenceResponse(request_id=received[-1], ok=True, content="again").model_dump_json().encode())

    await bus.nc.subscribe(Subjects.INFER, cb=gateway)
    client = InferenceClient(bus.nc, bus.wait_reconnected)
    request = InferenceRequest(request_id="q1", messages=chat("s", "u"))
    try:
        call = asyncio.create_task(client.complete(request, timeout_s=60))
        await asyncio.wait_for(first_request.wait(), 10)
        server.stop()
        server.start()
        response = await asyncio.wait_for(call, 30)  # well before the 60 s the lost reply would cost
    finally:
        await bus.close()
        server.stop()
    assert response.ok and response.content == "again"
    assert received == ["q1", "q1"]
