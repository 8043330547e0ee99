"""The stack on a 3-node NATS JetStream cluster (R3 streams) loses nodes mid-run: nothing is lost or doubled.

The heaviest tests of the suite: one 300-agent, 4,000-step run, then one smaller run on two nodes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from loadtest.scenarios import build_swarm, fanout_plan
from swarm.client import SwarmClient
from swarm.contracts import (
    ALL_STREAMS,
    RESULTS,
    TERMINAL_RUN_EVENTS,
    Plan,
    RunCompleted,
)
from swarm.ops.natsserver import cluster_ports, node_status
from swarm.ops.queries import query_via_recorder
from swarm.ops.stack import Stack
from swarm.settings import NatsSettings, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLUSTER_ENV = {  # as `swarm loadtest` runs the embedded stack: room for a 300-wide layer
    "SWARM_GATEWAY_SIM_LATENCY_SCALE": "1",
    "SWARM_WORKER_CONCURRENCY": "256",
    "SWARM_GATEWAY_MAX_QUEUE": "600",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, start_stack: Any) -> Iterator[Stack]:
    client_port, monitor_port, route_port = cluster_ports(3)
    settings = StackSettings(
        home=tmp_path_factory.mktemp("swarm-cluster"), nats_port=client_port, nats_monitor_port=monitor_port,
        nats_cluster_port=route_port, nats_cluster=3, gateway_backend="sim", workers=2,
    )  # fmt: skip
    with start_stack(CLUSTER_ENV, settings) as running:
        yield running


def monitor_ports(stack: Stack) -> dict[str, int]:
    return {str(n["name"]): int(n["monitor_port"]) for n in stack.state()["nats_nodes"]}  # type: ignore[index, union-attr]


def meta_leader(stack: Stack) -> str:
    leaders = [name for name, row in node_status(monitor_ports(stack)).items() if row["meta_leader"]]
    assert len(leaders) == 1, leaders
    return leaders[0]


def stream_states(stack: Stack) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Per node, each stream's (messages, first sequence, last sequence) as that node stores it."""
    states = {}
    for name, port in monitor_ports(stack).items():
        jsz = httpx.get(f"http://127.0.0.1:{port}/jsz?streams=true", timeout=5).json()
        streams = [s for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []]
        states[name] = {
            s["name"]: (s["state"]["messages"], s["state"]["first_seq"], s["state"]["last_seq"]) for s in streams
        }
    return states


async def wait_streams_equal_on_all_nodes(stack: Stack, timeout_s: float = 60) -> dict[str, tuple[int, int, int]]:
    """Wait until every node stores the same state of every stream (a restarted node has caught up)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        states = await asyncio.to_thread(stream_states, stack)
        per_node = list(states.values())
        if len(per_node) == 3 and all(s == per_node[0] for s in per_node) and len(per_node[0]) >= len(ALL_STREAMS):
            return per_node[0]
        assert asyncio.get_running_loop().time() < deadline, f"nodes differ: {states}"
        await asyncio.sleep(1.0)


async def assert_mid_run(client: SwarmClient, run_id: str) -> None:
    """The run has started and not ended: a kill now lands mid-run."""
    latest = await client.latest_events(run_id, timeout_s=15)
    kinds = {e.kind for e in latest or []}
    assert "planned" in kinds and not kinds & set(TERMINAL_RUN_EVENTS), kinds


async def succeeded_in_stream(client: SwarmClient, run_id: str) -> Counter[str]:
    """Distinct 'succeeded' events per step in EVENTS (a replay after a crash repeats an event id)."""
    events = {e.event_id: e for e in await client.step_events(run_id) if e.kind == "succeeded"}
    return Counter(e.step_id for e in events.values())


async def succeeded_in_clickhouse(client: SwarmClient, run_id: str, timeout_s: float = 120) -> Counter[str]:
    """'succeeded' rows per step in the event log, once the recorder has stored everything in EVENTS."""
    await client.wait_recorded(timeout_s)  # then the rows are final
    rows = await query_via_recorder(
        client.bus.nc,
        "SELECT step_id, count() AS n FROM step_events FINAL WHERE run_id = {run:String} AND kind = 'succeeded' "
        "GROUP BY step_id",
        {"run": run_id},
        timeout_s=60,
    )
    return Counter({row["step_id"]: int(row["n"]) for row in rows})


async def assert_every_step_succeeded_once(client: SwarmClient, run_id: str, plan: Plan) -> None:
    """Exactly one 'succeeded' per step of the plan, none missing: in the EVENTS stream and in ClickHouse."""
    once = Counter({s.id: 1 for s in plan.steps})
    assert await succeeded_in_stream(client, run_id) == once
    assert await succeeded_in_clickhouse(client, run_id) == once


async def test_run_survives_kill_9_of_results_leader_then_meta_leader(stack: Stack) -> None:
    plan = build_swarm(seed=0, latency_scale=1.0).plan
    assert len(plan.agents) == 300 and len(plan.steps) == 4000
    killed = []
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        # Followed from the start: the follower's consumer lives on one node, and is re-created when it dies.
        final_event = asyncio.create_task(client.wait(run_id, timeout_s=300))
        await asyncio.sleep(8)
        await assert_mid_run(client, run_id)
        results_leader = (await client.bus.js.stream_info(RESULTS.name)).cluster.leader  # type: ignore[union-attr]
        assert results_leader in monitor_ports(stack)
        await asyncio.to_thread(stack.stop_node, results_leader, True)
        killed.append(results_leader)
        await asyncio.sleep(3)
        await asyncio.to_thread(stack.start_node, results_leader)  # waits until healthy: caught up
        await asyncio.sleep(2)
        leader = await asyncio.to_thread(meta_leader, stack)
        await assert_mid_run(client, run_id)
        await asyncio.to_thread(stack.stop_node, leader, True)
        killed.append(leader)
        await asyncio.sleep(3)
        await asyncio.to_thread(stack.start_node, leader)

        final = await final_event
        assert isinstance(final, RunCompleted), final
        assert final.summary.steps_succeeded == 4000
        await assert_every_step_succeeded_once(client, run_id, plan)
    agreed = await wait_streams_equal_on_all_nodes(stack)
    # Every node holds the same RESULTS, which carried the run's results (in batches: fewer messages than
    # steps) and holds none now: each was applied and acknowledged.
    messages, _, last_sequence = agreed[RESULTS.name]
    assert messages == 0 and last_sequence > 0, agreed
    assert len(killed) == 2


async def test_new_runs_complete_on_two_nodes_after_sigterm(stack: Stack) -> None:
    gone = "nats-1"  # the first URL every service connected to
    await asyncio.to_thread(stack.stop_node, gone)
    alive = {p["name"]: p["alive"] for p in stack.processes()}
    assert alive[gone] is False and alive["nats-2"] and alive["nats-3"]
    plan = fanout_plan(300, latency_scale=0.2).plan  # 300 agents' steps and a reduce, ~200 ms each
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        final = await client.wait(run_id, timeout_s=180)
        assert isinstance(final, RunCompleted), final
        assert final.summary.steps_succeeded == 301
        await assert_every_step_succeeded_once(client, run_id, plan)
