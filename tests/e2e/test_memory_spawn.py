"""Agents that remember and runs that grow, through the whole stack as processes (sim backend).

The sim echoes a step's prompt into its output when the step asks (`sim_echo`), so these tests assert on
what the gateway received; it makes scripted tool calls (`sim_tool_calls`), so a spawn needs no real model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from swarm.client import SwarmClient
from swarm.contracts import (
    DEFAULT_TENANT,
    MEMORY_BUCKET,
    AgentSpec,
    Keys,
    MemoryMode,
    MemoryPolicy,
    MemoryTurn,
    Plan,
    RunCompleted,
    RunProgress,
    SimToolCall,
    StepEventKind,
    StepSpec,
)
from swarm.ops.queries import query_via_recorder
from swarm.ops.stack import Stack
from swarm.payloads import Payloads
from swarm.settings import NatsSettings, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_STEPS = 12  # the dispatcher's run limit in this stack: small, so a spawn can go over it
ENV = {
    "SWARM_GATEWAY_SIM_LATENCY_SCALE": "1",
    "SWARM_WORKER_CONCURRENCY": "8",
    "SWARM_DISPATCHER_MAX_STEPS": str(MAX_STEPS),
}
REMEMBERS = MemoryPolicy(mode=MemoryMode.LAST_TURNS, max_turns=4, max_chars=6000)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, start_stack: Any) -> Iterator[Stack]:
    settings = StackSettings(
        home=tmp_path_factory.mktemp("swarm-memory"), nats_port=0, nats_monitor_port=0,
        gateway_backend="sim", workers=1, dispatchers=1,
    )  # fmt: skip
    with start_stack(ENV, settings) as running:
        yield running


def step(step_id: str, agent_id: str, instruction: str, *deps: str, **fields: object) -> StepSpec:
    return StepSpec(id=step_id, agent_id=agent_id, instruction=instruction, depends_on=deps,
                    sim_latency_ms=fields.pop("sim_latency_ms", 50.0), **fields)  # type: ignore[arg-type]  # fmt: skip


async def output(client: SwarmClient, run_id: str, step_id: str) -> str:
    data = await Payloads(client.bus).get(Keys.output(DEFAULT_TENANT, run_id, step_id))
    assert data is not None, f"no output for {step_id}"
    return data.decode()


async def test_an_agents_third_turn_receives_its_first_two_turns(stack: Stack) -> None:
    # Agent b's turns sit between a's, so a's earlier outputs can reach t3 only through a's memory.
    plan = Plan(
        agents=(AgentSpec(id="a", role="inspector", memory=REMEMBERS), AgentSpec(id="b", role="clerk")),
        steps=(
            step("t1", "a", "Inspect the north gate"),
            step("x1", "b", "File the note", "t1"),
            step("t2", "a", "Record the gate state", "x1", tools=("scratchpad",), sim_tool_calls=(
                SimToolCall(tool="scratchpad", arguments={"op": "put", "key": "gate", "value": "open-42"}),)),
            step("x2", "b", "File the record", "t2"),
            step("t3", "a", "Report on the gate", "x2", sim_echo=True),
        ),
    )  # fmt: skip
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        final = await client.wait(run_id, timeout_s=120)
        assert isinstance(final, RunCompleted), final
        t1, t2, x1, t3 = [await output(client, run_id, s) for s in ("t1", "t2", "x1", "t3")]
    prompt = t3.split("\nECHO>>", 1)[0]  # what the gateway received as t3's user message
    assert "[t1] Instruction: Inspect the north gate" in prompt and t1[:200] in prompt
    assert "[t2] Instruction: Record the gate state" in prompt and t2[:200] in prompt
    assert "Tool call (scratchpad)" in prompt and "open-42" in prompt  # the tool call and its result
    assert x1[:200] not in prompt  # another agent's turn is not this agent's memory
    assert prompt.index("[t1]") < prompt.index("[t2]") < prompt.index("Your task: Report on the gate")


async def test_a_turn_retried_after_its_worker_is_killed_sees_exactly_the_committed_history(stack: Stack) -> None:
    plan = Plan(
        agents=(AgentSpec(id="a", role="surveyor", memory=REMEMBERS),),
        steps=(
            step("k1", "a", "Measure the east wall"),
            step("k2", "a", "Measure the west wall", "k1"),
            step("k3", "a", "Compare the walls", "k2", sim_echo=True, sim_latency_ms=6000.0),
        ),
    )  # fmt: skip
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        # Entries no dispatch names: a retry of k2 that wrote its memory but whose result never counted,
        # and k3's own attempt half-done. The retried k3 must see neither.
        store = Payloads(client.bus, bucket=MEMORY_BUCKET)
        stray = {("k2", 2): "FORGED-RETRY", ("k3", 1): "HALF-WRITTEN"}
        for (step_id, attempt), text in stray.items():
            entry = MemoryTurn(step_id=step_id, attempt=attempt, instruction=text, output=text)
            await store.put(Keys.memory_turn(DEFAULT_TENANT, run_id, "a", step_id, attempt), entry.model_dump_json().encode())
        await finished(client, run_id, "k2")
        await asyncio.sleep(1.5)  # the only worker has taken k3 and waits on its 6 s model call
        killed = await asyncio.to_thread(stack.kill, "worker", 0)
        respawned = await asyncio.to_thread(stack.respawn, "worker", 0)
        final = await client.wait(run_id, timeout_s=120)
        assert isinstance(final, RunCompleted), final
        events = await client.step_events(run_id)
        (done,) = [e for e in events if e.step_id == "k3" and e.kind is StepEventKind.SUCCEEDED]
        assert done.worker_id.endswith(f":{respawned}") and killed != respawned
        committed = [
            MemoryTurn.model_validate_json(await store.get(Keys.memory_turn(DEFAULT_TENANT, run_id, "a", s, 1)) or b"")
            for s in ("k1", "k2")
        ]
        k3 = await output(client, run_id, "k3")
    prompt = k3.split("\nECHO>>", 1)[0]
    for turn in committed:
        assert prompt.count(f"[{turn.step_id}] Instruction: {turn.instruction}") == 1
        assert turn.output[:200] in prompt
    assert "FORGED-RETRY" not in prompt and "HALF-WRITTEN" not in prompt and "[k3]" not in prompt


async def test_spawned_steps_run_feed_their_dependents_and_a_spawn_over_the_limit_gets_a_clear_error(
    stack: Stack,
) -> None:
    grow = {
        "agents": [{"id": "w1", "role": "scout", "memory": {"seed": "SEED-zebrafinch-7"}}, {"id": "w2", "role": "scout"}],
        "steps": [
            {"id": "c1", "agent_id": "w1", "instruction": "Survey the colony", "sim_echo": True, "sim_latency_ms": 50},
            {"id": "c2", "agent_id": "w2", "instruction": "Count the nests", "sim_latency_ms": 50},
            {"id": "c3", "agent_id": "w2", "instruction": "Merge the surveys", "depends_on": ["c1", "c2"],
             "sim_echo": True, "sim_latency_ms": 50},
        ],
    }  # fmt: skip
    too_much = {"steps": [{"id": f"extra{i}", "agent_id": "w2", "instruction": "more"} for i in range(8)]}
    plan = Plan(
        agents=(AgentSpec(id="lead", role="orchestrator"),),
        steps=(
            step("root", "lead", "Plan the survey", tools=("spawn",), sim_tool_calls=(
                SimToolCall(tool="spawn", arguments=grow), SimToolCall(tool="spawn", arguments=too_much))),
            step("final", "lead", "Write the report", "root", sim_echo=True),
        ),
    )  # fmt: skip
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        final = await client.wait(run_id, timeout_s=120)
        assert isinstance(final, RunCompleted), final
        assert final.summary.steps_total == 5 and final.summary.steps_succeeded == 5 and final.answer
        c1, c3, last = [await output(client, run_id, s) for s in ("c1", "c3", "final")]
        events = await client.step_events(run_id)
        calls = sorted((e for e in events if e.step_id == "root" and e.kind is StepEventKind.TOOL_CALL),
                       key=lambda e: e.event_id)  # fmt: skip
        spawned_by = {e.step_id: e.attributes.get("spawned_by") for e in events if e.kind is StepEventKind.QUEUED}
        rows = await recorded_spawns(client, run_id)
    assert "SEED-zebrafinch-7" in c1.split("\nECHO>>", 1)[0]  # the memory its parent gave it
    assert "[c1]" in c3 and "[c3]" in last.split("\nECHO>>", 1)[0]  # spawned outputs reach their dependents
    assert c3.split("\nECHO>>", 1)[0][-200:] in last  # ... and the plan's own step that waited for them
    assert [c.attributes["outcome"] for c in calls] == ["ok", "error"]
    assert "over the run's limits" in calls[1].error and "may still add 10 steps" in calls[1].error and "asked for 11 steps" in calls[1].error
    assert spawned_by == {"root": None, "final": None, "c1": "root", "c2": "root", "c3": "root"}
    assert rows == [{"step_id": s, "parent": "root"} for s in ("c1", "c2", "c3")]


async def finished(client: SwarmClient, run_id: str, step_id: str) -> None:
    """Return once the run's progress says `step_id` finished (its dependents are queued then)."""
    async for event in client.events(run_id):
        if isinstance(event, RunProgress) and step_id in event.finished_step_ids:
            return


async def recorded_spawns(client: SwarmClient, run_id: str, timeout_s: float = 60) -> list[dict[str, str]]:
    """The spawned_by column of the run's steps in ClickHouse, once the recorder has caught up."""
    await client.wait_recorded(timeout_s)  # then the rows are final
    return await query_via_recorder(
        client.bus.nc,
        "SELECT step_id, any(spawned_by) AS parent FROM step_events FINAL WHERE run_id = {run:String} "
        "AND spawned_by != '' GROUP BY step_id ORDER BY step_id",
        {"run": run_id},
        timeout_s=30,
    )
