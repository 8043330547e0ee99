"""The dispatcher with plans by reference: a new run, a restart that restores the run from its checkpoint, a bad ref."""

from __future__ import annotations

import asyncio

import pytest

from services.aggregator.__main__ import main as aggregator_main
from services.aggregator.settings import AggregatorSettings
from services.dispatcher.__main__ import main as dispatcher_main
from services.dispatcher.settings import DispatcherSettings
from services.worker_pool.__main__ import main as worker_main
from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus
from swarm.client import SwarmClient
from swarm.contracts import PlanRef, PlanSource, RunCompleted, RunFailed, RunPlanned, Subjects, utc_now
from swarm.payloads import PlanStore
from swarm.settings import NatsSettings
from tests.integration.test_run_engine import gateway, layered_plan, service, succeeded_events

pytestmark = pytest.mark.integration


async def start_run_by_ref(bus: Bus, run_id: str, ref: PlanRef, steps: int) -> None:
    planned = RunPlanned(
        run_id=run_id, tenant="t", goal="g", plan_ref=ref, steps_count=steps, source=PlanSource.EXPLICIT,
        submitted_at=utc_now(),
    )  # fmt: skip
    await bus.publish(Subjects.run_event("t", run_id, "planned"), planned, msg_id=f"{run_id}.planned")


async def test_a_run_by_reference_survives_a_dispatcher_restart(bus: Bus, nats_settings: NatsSettings) -> None:
    plan = layered_plan(layers=8, width=8)
    ref = await PlanStore(bus.js).put(plan)
    settings = DispatcherSettings(nats=nats_settings)
    async with (
        gateway(bus),
        service(worker_main, WorkerSettings(nats=nats_settings, concurrency=8)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        async with service(dispatcher_main, settings):
            await start_run_by_ref(bus, "run-ref", ref, len(plan.steps))
            await asyncio.sleep(0.3)
        async with service(dispatcher_main, settings):  # a new process's PlanStore: resolved from the store
            final = await SwarmClient(bus).wait("run-ref", "t", timeout_s=60)
    assert isinstance(final, RunCompleted), final
    assert sorted(await succeeded_events(bus, "run-ref")) == sorted(s.id for s in plan.steps)


async def test_a_run_whose_plan_is_gone_fails_with_the_reason(bus: Bus, nats_settings: NatsSettings) -> None:
    async with service(dispatcher_main, DispatcherSettings(nats=nats_settings)):
        await start_run_by_ref(bus, "run-gone", PlanRef(sha256="ab" * 32, size=100), 5)
        final = await SwarmClient(bus).wait("run-gone", "t", timeout_s=30)
    assert isinstance(final, RunFailed) and "plan unavailable" in final.error
