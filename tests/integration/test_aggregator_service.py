"""The aggregator's intake on the control plane (faststream): the one error policy, one connection."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator

import pytest

from services.aggregator.app import AggregatorService
from services.aggregator.settings import AggregatorSettings
from services.aggregator.synthesis import EXECUTED_CONSUMER
from swarm.bus import Bus
from swarm.contracts import RUNS, Subjects
from swarm.ops.natsserver import NatsServer
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def aggregator(bus: Bus, nats_settings: NatsSettings) -> AsyncIterator[AggregatorService]:
    service = AggregatorService(AggregatorSettings(nats=nats_settings, fetch_timeout_s=0.2))
    app = service.app()
    await app.start()
    yield service
    await app.stop()


async def test_a_malformed_executed_event_is_terminated_not_redelivered(
    bus: Bus, aggregator: AggregatorService
) -> None:
    terminated = await bus.nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{RUNS.name}.>")
    await bus.js.publish(Subjects.run_event("acme", "run-bad", "executed"), b'{"not": "an executed run"}')
    advisory = json.loads((await terminated.next_msg(timeout=10)).data)
    assert (advisory["consumer"], advisory["deliveries"]) == (EXECUTED_CONSUMER.durable, 1)
    info = await bus.js.consumer_info(RUNS.name, EXECUTED_CONSUMER.durable)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)


async def test_the_aggregator_has_one_connection(nats_server: NatsServer, aggregator: AggregatorService) -> None:
    def connections() -> list[dict[str, object]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{nats_server.monitor_port}/connz", timeout=5) as reply:
            return list(json.loads(reply.read())["connections"])

    names = [c.get("name") for c in await asyncio.to_thread(connections)]
    assert names.count("aggregator") == 1, names
    reply = await aggregator.control.bus.nc.request(Subjects.health("aggregator"), b"", timeout=2)  # type: ignore[union-attr]
    assert json.loads(reply.data)["service"] == "aggregator"
