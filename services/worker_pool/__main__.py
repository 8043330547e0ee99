"""Worker-pool entry point: `python -m services.worker_pool`."""

from __future__ import annotations

import asyncio
import logging

from services.worker_pool.execution import StepExecutor, steps_consumer
from services.worker_pool.settings import WorkerSettings
from services.worker_pool.tools.sandbox import startup_warning
from swarm.bus import Bus, consume
from swarm.contracts import tenant_payloads_store
from swarm.service import run_service


async def main(stop: asyncio.Event, settings: WorkerSettings | None = None) -> None:
    """Provision, run steps until `stop`, finish the ones in flight, drain."""
    settings = settings or WorkerSettings()
    if warning := await asyncio.to_thread(startup_warning, settings.sandbox, settings.sandbox_user):
        logging.getLogger("services.worker_pool").warning(warning)
    bus = await Bus.connect(settings.nats, "worker")
    await bus.provision()
    await bus.provision((), [tenant_payloads_store(tenant) for tenant in settings.tenants])  # a dedicated pool's
    executor = StepExecutor(bus, settings)
    await executor.watch_ended_runs()
    spec = steps_consumer(settings)

    async def run_steps() -> None:
        steps = await bus.pull_subscription(spec)
        await consume(steps, executor.on_step, stop, batch=settings.concurrency, concurrency=settings.concurrency,
                      give_up_after=spec.max_deliver)  # fmt: skip

    await bus.serve_health("worker", executor.health)
    heartbeats = asyncio.create_task(bus.loops.run("heartbeats", executor.heartbeats, stop))
    await bus.loops.run("steps", run_steps, stop)
    heartbeats.cancel()
    await bus.close()


if __name__ == "__main__":
    _settings = WorkerSettings()
    run_service("worker", lambda stop: main(stop, _settings), _settings.log_level)
