"""The dispatcher's fair share with real NATS: caps that hold across replicas, freed slots to the late tenant."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from services.dispatcher.__main__ import main as dispatcher_main
from services.dispatcher.settings import DispatcherSettings
from swarm.bus import Bus
from swarm.contracts import (
    STEPS,
    AgentSpec,
    Plan,
    PlanSource,
    RunPlanned,
    StepDispatch,
    StepResult,
    StepSpec,
    StepStatus,
    Subjects,
    utc_now,
)
from swarm.settings import NatsSettings
from tests.integration.test_run_engine import service

pytestmark = pytest.mark.integration


def flat_plan(n: int) -> Plan:
    return Plan(
        agents=(AgentSpec(id="a", role="r"),),
        steps=tuple(StepSpec(id=f"s{i}", agent_id="a", instruction="x") for i in range(n)),
    )


async def plan_run(bus: Bus, tenant: str, run_id: str, n: int) -> None:
    planned = RunPlanned(
        run_id=run_id, tenant=tenant, goal="g", plan=flat_plan(n), source=PlanSource.EXPLICIT, submitted_at=utc_now()
    )
    await bus.publish(Subjects.run_event(tenant, run_id, "planned"), planned, msg_id=f"{run_id}.planned")


async def queued_steps(bus: Bus) -> list[StepDispatch]:
    """Every step message on the queue (no worker consumes it here)."""
    info = await bus.js.stream_info(STEPS.name)
    first, last = info.state.first_seq, info.state.last_seq
    found = []
    for seq in range(first, last + 1) if info.state.messages else ():
        msg = await bus.js.get_msg(STEPS.name, seq)
        found.append(StepDispatch.model_validate_json(msg.data or b""))
    return found


async def settled(bus: Bus, wait_s: float = 3.0) -> list[StepDispatch]:
    """The queue once it stopped growing."""
    previous = -1
    steps: list[StepDispatch] = []
    for _ in range(int(wait_s / 0.5)):
        await asyncio.sleep(0.5)
        steps = await queued_steps(bus)
        if len(steps) == previous:
            break
        previous = len(steps)
    return steps


async def test_the_tenant_cap_holds_across_two_replicas(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = DispatcherSettings(nats=nats_settings, max_in_flight=1000, max_in_flight_per_tenant=6)
    async with service(dispatcher_main, settings), service(dispatcher_main, settings):
        await asyncio.sleep(2.5)  # both replicas are members and hold their partitions
        for k in range(8):
            await plan_run(bus, "acme", f"cap-{k}", 10)
        steps = await settled(bus)
    assert 0 < len(steps) <= 6, f"{len(steps)} steps of one tenant in flight over a cap of 6"


async def test_freed_slots_go_to_the_late_tenant_before_the_big_runs_rest(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = DispatcherSettings(nats=nats_settings, max_in_flight=10)
    async with service(dispatcher_main, settings):
        await plan_run(bus, "big", "big-run", 100)
        first = await settled(bus)
        assert [s.run_id for s in first] == ["big-run"] * 10  # the pool's worth, the rest held back
        await plan_run(bus, "small", "small-run", 5)
        await asyncio.sleep(1.0)
        assert len(await queued_steps(bus)) == 10  # no slot free: the small run waits in the dispatcher
        now = utc_now()
        for step in first[:6]:  # six of the big run's steps finish
            result = StepResult(
                run_id="big-run", step_id=step.step.id, attempt=1, status=StepStatus.SUCCEEDED, output="ok",
                started_at=now, finished_at=now + timedelta(milliseconds=1), worker_id="w",
            )  # fmt: skip
            await bus.publish(Subjects.result("big", "big-run"), result)
        after = (await settled(bus))[10:]
    assert sorted(s.run_id for s in after) == ["big-run"] + ["small-run"] * 5, [s.run_id for s in after]
