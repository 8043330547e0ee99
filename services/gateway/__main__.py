"""Entry point: `python -m services.gateway`."""

from __future__ import annotations

import asyncio

from services.gateway.server import serve
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.service import run_service
from swarm.settings import NatsSettings

SERVICE = "gateway"


async def main(stop: asyncio.Event) -> None:
    """Serve until stopped, then drain."""
    settings = GatewaySettings()
    bus = await Bus.connect(NatsSettings(), SERVICE)
    try:
        async with serve(settings, bus, SERVICE):
            await stop.wait()
    finally:
        await bus.close()


if __name__ == "__main__":
    run_service(SERVICE, main, GatewaySettings().log_level)
