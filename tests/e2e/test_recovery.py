"""Crashes mid-run, as processes: kill -9 a worker, kill -9 a dispatcher replica, restart nats-server.

Each time the run completes and every step is counted exactly once (one 'succeeded' transition each).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from loadtest.scenarios import swarm_plan
from swarm.client import SwarmClient
from swarm.contracts import (
    DISPATCHER_LEASES_BUCKET,
    AgentSpec,
    Plan,
    RunCompleted,
    StepSpec,
    Subjects,
    result_partition,
)
from swarm.ops.queries import query_via_recorder
from swarm.ops.stack import Stack
from swarm.settings import NatsSettings, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CRASH_ENV = {
    "SWARM_GATEWAY_SIM_LATENCY_SCALE": "1",
    "SWARM_WORKER_CONCURRENCY": "256",  # the 4,000-step run's 300-wide layers
    "SWARM_GATEWAY_MAX_QUEUE": "600",
    # Batches held ~1 s between fetch and insert, so a kill -9 lands on fetched, unstored events
    # (which come back after the recorder's default ack_wait).
    "SWARM_RECORDER_BATCH_MAX_MS": "1000",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, start_stack: Any) -> Iterator[Stack]:
    settings = StackSettings(
        home=tmp_path_factory.mktemp("swarm-crash"), nats_port=0, nats_monitor_port=0,
        gateway_backend="sim", workers=2, dispatchers=2,
    )  # fmt: skip
    with start_stack(CRASH_ENV, settings) as running:
        yield running


def wide_plan(n_steps: int, latency_ms: float) -> Plan:
    """Layers of 8 steps, each depending on the previous layer; every step takes `latency_ms` in the engine."""
    agents = tuple(AgentSpec(id=f"a{i}", role="analyst") for i in range(8))
    steps = []
    for n in range(n_steps):
        layer, i = divmod(n, 8)
        deps = tuple(f"s{layer - 1}_{j}" for j in range(8)) if layer else ()
        steps.append(StepSpec(id=f"s{layer}_{i}", agent_id=f"a{i}", instruction="work", depends_on=deps,
                              sim_latency_ms=latency_ms))  # fmt: skip
    return Plan(agents=agents, steps=tuple(steps))


async def run_through(
    stack: Stack, plan: Plan, crash: Callable[[], None], crash_after_s: float, run_ids: list[str] | None = None,
    timeout_s: float = 120,
) -> RunCompleted:
    """Submit, crash something mid-run, and return the final event once every step is accounted for."""
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        if run_ids is not None:
            run_ids.append(run_id)
        await asyncio.sleep(crash_after_s)
        await asyncio.to_thread(crash)
        final = await client.wait(run_id, timeout_s=timeout_s)
        assert isinstance(final, RunCompleted), final
        succeeded = await transitions(client, run_id, "succeeded")
    assert succeeded == Counter({s.id: 1 for s in plan.steps})
    return final


async def transitions(client: SwarmClient, run_id: str, kind: str) -> Counter[str]:
    """Distinct transitions per step: a replay after a crash repeats an event with the same id."""
    events = {e.event_id: e for e in await client.step_events(run_id) if e.kind == kind}
    return Counter(e.step_id for e in events.values())


async def test_worker_killed_mid_step(stack: Stack) -> None:
    final = await run_through(stack, wide_plan(48, 400), lambda: stack.kill("worker", 0), crash_after_s=1.0)
    assert final.summary.steps_succeeded == 48
    stack.respawn("worker", 0)


async def test_dispatcher_replica_killed_mid_run(stack: Stack) -> None:
    killed: list[int] = []

    def crash() -> None:
        # Kill the replica that owns the run's results partition, so the other one must take the run over.
        owner_pid = asyncio.run(partition_owner_pid(stack, run_ids[-1]))
        pids = [p["pid"] for p in stack.state()["services"] if p["name"] == "dispatcher"]  # type: ignore[index]
        killed.append(pids.index(owner_pid))
        stack.kill("dispatcher", killed[-1])

    run_ids: list[str] = []
    await run_through(stack, wide_plan(64, 300), crash, crash_after_s=1.0, run_ids=run_ids)
    stack.respawn("dispatcher", killed[0])


async def partition_owner_pid(stack: Stack, run_id: str) -> int:
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        leases = await client.bus.kv(DISPATCHER_LEASES_BUCKET)
        for _ in range(100):  # a lease may be between owners for a moment
            try:
                owner = (await leases.get(f"p{result_partition(run_id)}")).value.decode()
                break
            except KeyNotFoundError:
                await asyncio.sleep(0.1)
    return int(owner.split("-")[-2])  # instance ids are <host>-<pid>-<random>


async def test_recorder_killed_three_times_mid_run_loses_and_doubles_nothing(stack: Stack) -> None:
    plan = wide_plan(240, 300)
    killed_holding: list[int] = []

    def crash_three_times() -> None:
        for _ in range(3):  # each time while it holds fetched events not yet inserted
            killed_holding.append(asyncio.run(recorder_holding_events(stack)))
            stack.kill("recorder", 0)
            stack.respawn("recorder", 0)

    run_ids: list[str] = []
    await run_through(stack, plan, crash_three_times, crash_after_s=0.5, run_ids=run_ids)
    assert len(killed_holding) == 3 and min(killed_holding) > 0
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        await assert_event_log_matches_stream(client, run_ids[0])


async def recorder_holding_events(stack: Stack, timeout_s: float = 30) -> int:
    """Wait until the recorder holds fetched events waiting for their insert; how many."""
    nc = await nats.connect(stack.nats_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                reply = await nc.request(Subjects.health("recorder"), b"", timeout=0.5)
                pending = int(json.loads(reply.data).get("events_pending", 0))
                if pending:
                    return pending
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass  # not up yet
            await asyncio.sleep(0.02)
        return 0
    finally:
        await nc.close()


async def assert_event_log_matches_stream(client: SwarmClient, run_id: str, timeout_s: float = 60) -> None:
    """ClickHouse holds exactly one row (after FINAL) per step event in EVENTS: none missing, none doubled."""
    in_stream = {e.event_id for e in await client.step_events(run_id)}
    await client.wait_recorded(timeout_s)  # then the rows are final
    stored = await query_via_recorder(
        client.bus.nc,
        "SELECT count() AS rows_n, uniqExact(event_id) AS unique_n, countIf(event_id IN {ids:Array(String)}) AS "
        "known_n FROM step_events FINAL WHERE run_id = {run:String}",
        {"run": run_id, "ids": sorted(in_stream)},
        timeout_s=30,
    )
    n = len(in_stream)
    assert stored == [{"rows_n": n, "unique_n": n, "known_n": n}], f"{n} events in EVENTS"


async def test_nats_server_restarted_mid_run(stack: Stack) -> None:
    await run_through(stack, wide_plan(48, 300), lambda: stack.restart_nats(down_s=1.0), crash_after_s=1.0)


async def test_300_agents_4000_steps_through_a_kill_of_every_service_and_a_nats_restart(stack: Stack) -> None:
    """The headline run at latency scale 1: every step succeeds exactly once, and the event log holds
    exactly the events of the EVENTS stream, after kill -9 of each service (respawned) and a NATS restart."""
    plan = swarm_plan(seed=1, latency_scale=1.0).plan
    assert len(plan.agents) == 300 and len(plan.steps) == 4000

    def crash_everything() -> None:
        for service in ("worker", "dispatcher", "recorder", "gateway", "aggregator", "planner"):
            stack.kill(service, 0)
            stack.respawn(service, 0)
            time.sleep(2.5)
        stack.restart_nats(down_s=1.0)

    run_ids: list[str] = []
    final = await run_through(stack, plan, crash_everything, crash_after_s=3.0, run_ids=run_ids, timeout_s=300)
    assert final.summary.steps_succeeded == 4000 and final.summary.steps_failed == 0
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        await assert_event_log_matches_stream(client, run_ids[0], timeout_s=120)
