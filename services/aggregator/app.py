"""The aggregator on the control plane: a faststream subscriber on executed runs (`swarm.controlplane`)."""

from __future__ import annotations

import asyncio

from faststream import FastStream
from nats.aio.msg import Msg

from services.aggregator.settings import AggregatorSettings
from services.aggregator.synthesis import EXECUTED_CONSUMER, Aggregator
from swarm.controlplane import ControlPlane

SERVICE = "aggregator"


class AggregatorService:
    """Synthesizes executed runs, at most `concurrency` at once, on the service's one connection."""

    def __init__(self, settings: AggregatorSettings) -> None:
        self.settings = settings
        self.aggregator: Aggregator | None = None
        self.control = ControlPlane(settings.nats, SERVICE, settings.graceful_timeout_s)
        self.control.subscribe(
            EXECUTED_CONSUMER, self.on_executed, concurrency=settings.concurrency,
            fetch_timeout_s=settings.fetch_timeout_s, heartbeat_s=EXECUTED_CONSUMER.ack_wait_s / 3,
            description="Runs whose steps are finished: synthesized into RunCompleted, or RunFailed.",
        )  # fmt: skip

    async def on_executed(self, msg: Msg) -> None:
        """One executed run (a gateway outage retries it later: `swarm.bus.verdict`)."""
        assert self.aggregator is not None, "the subscriber starts after on_startup"
        await self.aggregator.on_executed(msg)

    async def on_startup(self) -> None:
        """Connected and provisioned: the aggregator, before the subscriber starts."""
        assert self.control.bus is not None
        self.aggregator = Aggregator(self.control.bus, self.settings)

    def app(self) -> FastStream:
        """The faststream application: SIGTERM stops the subscriber, waits for syntheses in hand, then closes."""
        return self.control.app(self.on_startup)


async def main(stop: asyncio.Event, settings: AggregatorSettings | None = None) -> None:
    """Synthesize executed runs until `stop`, then finish the syntheses in hand."""
    app = AggregatorService(settings or AggregatorSettings()).app()
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.stop()
