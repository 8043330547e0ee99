"""Worker-pool entry point: `python -m services.worker_pool`."""

from __future__ import annotations

import asyncio

from services.worker_pool.execution import StepExecutor, steps_consumer
from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus, consume
from swarm.service import run_service


async def main(stop: asyncio.Event, settings: WorkerSettings | None = None) -> None:
    """Provision, run steps until `stop`, finish the ones in flight, drain."""
    settings = settings or WorkerSettings()
    bus = await Bus.connect(settings.nats, "worker")
    await bus.provision()
    executor = StepExecutor(bus, settings)
    await executor.watch_ended_runs()
    steps = await bus.pull_subscription(steps_consumer(settings))
    await bus.serve_health("worker", lambda: executor.health())
    heartbeats = asyncio.create_task(executor.heartbeats())
    await consume(steps, executor.on_step, stop, batch=settings.concurrency, concurrency=settings.concurrency)
    heartbeats.cancel()
    await bus.close()


if __name__ == "__main__":
    _settings = WorkerSettings()
    run_service("worker", lambda stop: main(stop, _settings), _settings.log_level)
