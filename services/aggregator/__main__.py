"""Aggregator entry point: `python -m services.aggregator`."""

from __future__ import annotations

import asyncio

from services.aggregator.settings import AggregatorSettings
from services.aggregator.synthesis import EXECUTED_CONSUMER, Aggregator
from swarm.bus import Bus, consume
from swarm.service import run_service


async def main(stop: asyncio.Event, settings: AggregatorSettings | None = None) -> None:
    """Provision, synthesize executed runs until `stop`, drain."""
    settings = settings or AggregatorSettings()
    bus = await Bus.connect(settings.nats, "aggregator")
    await bus.provision()
    aggregator = Aggregator(bus, settings)

    async def synthesize() -> None:
        executed = await bus.pull_subscription(EXECUTED_CONSUMER)
        await consume(
            executed, aggregator.on_executed, stop, batch=8, concurrency=8,
            heartbeat_s=EXECUTED_CONSUMER.ack_wait_s / 3, give_up_after=EXECUTED_CONSUMER.give_up_after,
        )  # fmt: skip

    await bus.serve_health("aggregator")
    await bus.loops.run("executed", synthesize, stop)
    await bus.close()


if __name__ == "__main__":
    _settings = AggregatorSettings()
    run_service("aggregator", lambda stop: main(stop, _settings), _settings.log_level)
