"""Dispatcher entry point: `python -m services.dispatcher`."""

from __future__ import annotations

import asyncio

from services.dispatcher.dispatching import PLANS_CONSUMER, Dispatcher
from services.dispatcher.settings import DispatcherSettings
from swarm.bus import Bus, consume
from swarm.service import run_service


async def main(stop: asyncio.Event, settings: DispatcherSettings | None = None) -> None:
    """Provision, take plans and results until `stop`, drain."""
    settings = settings or DispatcherSettings()
    bus = await Bus.connect(settings.nats, "dispatcher")
    await bus.provision()
    dispatcher = Dispatcher(bus, settings)
    await dispatcher.acquire_leases()

    async def take_plans() -> None:
        await consume(await bus.pull_subscription(PLANS_CONSUMER), dispatcher.on_run_message, stop)

    await bus.serve_health("dispatcher", lambda: {"runs": len(dispatcher.runs)})
    await asyncio.gather(
        bus.loops.run("plans", take_plans, stop),
        bus.loops.run("leases", lambda: dispatcher.run(stop), stop),
        bus.loops.run("sweeper", lambda: dispatcher.sweep_lost_steps(stop), stop),
    )
    await bus.close()


if __name__ == "__main__":
    _settings = DispatcherSettings()
    run_service("dispatcher", lambda stop: main(stop, _settings), _settings.log_level)
