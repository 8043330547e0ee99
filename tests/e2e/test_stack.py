"""The whole stack as processes: a task from the queue to the final answer, and every step in ClickHouse."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from services.recorder.settings import RecorderSettings
from swarm.client import SwarmClient
from swarm.contracts import RESULTS, AgentSpec, Plan, RunCompleted, RunRejected, StepSpec, Subjects
from swarm.ops.natsserver import NatsServer, free_port_block
from swarm.ops.queries import query_via_recorder
from swarm.ops.stack import Stack, StackAlreadyRunning, StackError, _port_free
from swarm.settings import NatsSettings, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("swarm-home")
    settings = StackSettings(
        home=home, nats_port=0, nats_monitor_port=0, gateway_backend="sim", workers=2
    )
    os.environ["SWARM_GATEWAY_SIM_LATENCY_SCALE"] = "0.05"
    running = Stack(settings)
    running.up(timeout_s=180)
    yield running
    running.down()
    assert running.state() is None


def diamond_plan(width: int) -> Plan:
    agents = (*(AgentSpec(id=f"a{i}", role="researcher") for i in range(width)), AgentSpec(id="lead", role="editor"))
    steps = [StepSpec(id="scope", agent_id="lead", instruction="Scope the question.")]
    steps += [StepSpec(id=f"m{i}", agent_id=f"a{i}", instruction=f"Research part {i}.", depends_on=("scope",))
              for i in range(width)]  # fmt: skip
    steps.append(StepSpec(id="reduce", agent_id="lead", instruction="Combine.", depends_on=tuple(f"m{i}" for i in range(width))))
    return Plan(agents=agents, steps=tuple(steps))


async def step_events(nats_url: str, run_id: str, kind: str) -> dict[str, int]:
    client = await SwarmClient.connect(NatsSettings(url=nats_url))
    try:
        rows = await query_via_recorder(
            client.bus.nc,
            "SELECT step_id, uniqExact(event_id) AS n FROM swarm.step_events WHERE run_id = {run:String} "
            "AND kind = {kind:String} GROUP BY step_id",
            {"run": run_id, "kind": kind},
        )
    finally:
        await client.close()
    return {row["step_id"]: int(row["n"]) for row in rows}


async def test_explicit_plan_runs_to_an_answer_and_every_step_is_recorded(stack: Stack) -> None:
    plan = diamond_plan(12)
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit(plan=plan)
        kinds = []
        async for event in client.events(run_id):
            kinds.append(event.kind)
        assert kinds[:2] == ["accepted", "planned"] and kinds[-1] == "completed", kinds
        final = await client.wait(run_id, timeout_s=5)
        assert isinstance(final, RunCompleted)
        assert final.answer.strip()
        assert final.summary.steps_total == 14 and final.summary.steps_succeeded == 14
        assert final.summary.completion_tokens > 0
        for _ in range(100):  # the run index trails RUNS by a moment (the recorder derives it)
            records = {r.run_id: r for r in await client.runs()}
            if run_id in records and records[run_id].status.value == "completed":
                break
            await asyncio.sleep(0.1)
        assert records[run_id].status.value == "completed"
    expected = {s.id: 1 for s in plan.steps}
    for _ in range(100):  # the recorder writes in batches: wait for the last one
        found = await step_events(stack.nats_url, run_id, "succeeded")
        if found == expected:
            break
        await asyncio.sleep(0.2)
    assert found == expected


async def test_goal_is_planned_executed_and_synthesized(stack: Stack) -> None:
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        run_id = await client.submit("Compare solar, wind and hydro power in Germany, Spain and Norway")
        final = await client.wait(run_id, timeout_s=120)
    assert isinstance(final, RunCompleted), final
    assert final.summary.steps_succeeded == final.summary.steps_total > 1


async def test_malformed_task_from_a_plain_client_is_rejected(stack: Stack) -> None:
    async with await SwarmClient.connect(NatsSettings(url=stack.nats_url)) as client:
        js = client.bus.js
        await js.publish(Subjects.task("default"), b'{"run_id": "bad-1", "goal": "  "}', headers={"Nats-Msg-Id": "bad-1"})
        final = await client.wait("bad-1", timeout_s=30)
        assert isinstance(final, RunRejected) and ("/goal", "pattern") in {(r.path, r.code) for r in final.reasons}
        await js.publish(Subjects.task("default"), b"\x00 not json", headers={"Nats-Msg-Id": "bad-2"})
        final = await client.wait("bad-2", timeout_s=30)
        assert isinstance(final, RunRejected)
        for _ in range(50):  # the rejection is published before the task is terminated
            info = await js.stream_info("TASKS")
            if info.state.messages == 0:
                break
            await asyncio.sleep(0.1)
        assert info.state.messages == 0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm.ops.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_cli_submit_follow_prints_answer_and_summary(stack: Stack) -> None:
    done = run_cli("submit", "Explain tides in two sentences", "--pattern", "map-reduce", "--agents", "3",
                   "--follow", "--nats-url", stack.nats_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Answer" in done.stdout and "Run summary" in done.stdout
    assert "4 succeeded, 0 failed of 4" in done.stdout, done.stdout


def test_second_up_says_it_runs(stack: Stack) -> None:
    with pytest.raises(StackAlreadyRunning):
        Stack(stack.settings).up()


def test_cli_bad_input_exits_non_zero_with_a_reason(tmp_path: Path) -> None:
    empty = run_cli("submit", "   ")
    assert empty.returncode == 2 and "empty" in empty.stderr
    missing = run_cli("submit", "--file", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    down = run_cli("submit", "hello", "--nats-url", f"nats://127.0.0.1:{free_port_block(1)}")
    assert down.returncode == 1 and "swarm up" in down.stderr


def test_services_run_in_process_groups_of_their_own_within_the_callers_session(stack: Stack) -> None:
    """Out of reach of a terminal's Ctrl-C, yet in the caller's session: with autogroup scheduling a session is
    a CPU group of its own, and a NATS server alone in one round-tripped at half the rate."""
    state = stack.state()
    assert state is not None
    pids = [int(n["pid"]) for n in state["nats_nodes"]] + [int(s["pid"]) for s in state["services"]]
    for pid in pids:
        assert os.getpgid(pid) == pid
        assert os.getsid(pid) == os.getsid(0)


def test_the_recorder_yields_the_cpu_to_the_services_on_a_steps_path(stack: Stack) -> None:
    state = stack.state()
    assert state is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    niceness = {s["name"]: os.getpriority(os.PRIO_PROCESS, int(s["pid"])) for s in state["services"]}
    assert niceness.pop("recorder") == min(19, ours + RecorderSettings().nice) > ours
    assert set(niceness.values()) == {ours}


def test_up_on_a_store_from_another_version_says_what_to_do_and_starts_nothing(tmp_path: Path) -> None:
    """A local stack's NATS store outlives upgrades; one whose streams another version made is named, with the remedy."""
    settings = StackSettings(home=tmp_path, nats_port=0, nats_monitor_port=0, gateway_backend="sim")
    old = NatsServer(store_dir=tmp_path / "nats", port=settings.nats_port, monitor_port=settings.nats_monitor_port).start()
    try:
        asyncio.run(_create_stream(old.url, StreamConfig(name=RESULTS.name, subjects=["swarm.results.older.*"])))
    finally:
        old.stop()
    stack = Stack(settings)
    with pytest.raises(StackError, match=r"made by another version of Swarm.*RESULTS.*delete .*nats"):
        stack.up(timeout_s=60)
    assert stack.state() is None and _port_free(settings.nats_port)  # the NATS server it started is stopped


async def _create_stream(url: str, config: StreamConfig) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()
