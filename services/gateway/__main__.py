"""Entry point: `python -m services.gateway`."""

from __future__ import annotations

import asyncio
import logging

from services.gateway.engine import create_engine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.service import run_service
from swarm.settings import NatsSettings

SERVICE = "gateway"
log = logging.getLogger(SERVICE)


async def main(stop: asyncio.Event) -> None:
    """Load the engine, join the queue group, serve until stopped, then drain."""
    settings = GatewaySettings()
    engine = await asyncio.to_thread(create_engine, settings)
    bus = await Bus.connect(NatsSettings(), SERVICE)
    try:
        await bus.provision()
        server = GatewayServer(bus, engine, settings)
        await server.start()
        await bus.serve_health(SERVICE, server.health)
        log.info("serving %s (%s), max_queue %d", engine.model, engine.name, settings.max_queue)
        await stop.wait()
        await server.stop()
    finally:
        await bus.close()
        await engine.close()


if __name__ == "__main__":
    run_service(SERVICE, main, GatewaySettings().log_level)
