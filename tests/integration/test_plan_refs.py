"""Plans by reference against a real nats-server: the store, the SDK's swap, the planner's intake of hostile refs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest.scenarios import build_chain, build_swarm
from services.planner.app import PlannerService
from services.planner.settings import PlannerSettings
from swarm.bus import Bus
from swarm.client import MessageTooLarge, SwarmClient
from swarm.contracts import (
    PLAN_INLINE_MAX_BYTES,
    PLANS_STORE,
    TASKS,
    AgentSpec,
    Keys,
    Plan,
    PlanRef,
    RejectionCode,
    RunPlanned,
    RunRejected,
    StepSpec,
    Subjects,
    TaskSubmission,
)
from swarm.ops.natsserver import NatsServer
from swarm.payloads import PlanStore, PlanUnavailable, plan_bytes, plan_ref_of
from swarm.settings import NatsSettings
from tests.integration.test_planner_service import run_event

pytestmark = pytest.mark.integration


def small_plan(instruction: str = "Do it.") -> Plan:
    return Plan(agents=(AgentSpec(id="a", role="r"),), steps=(StepSpec(id="s", agent_id="a", instruction=instruction),))


@pytest.fixture
async def planner(bus: Bus, nats_settings: NatsSettings) -> AsyncIterator[PlannerService]:
    service = PlannerService(PlannerSettings(nats=nats_settings, llm_enabled=False, fetch_timeout_s=0.2))
    app = service.app()
    await app.start()
    yield service
    await app.stop()


async def publish_raw(bus: Bus, run_id: str, body: dict[str, object]) -> None:
    await bus.publish_bytes(Subjects.task("default"), json.dumps(body).encode(), {"Nats-Msg-Id": run_id})


async def test_store_round_trip_is_digest_checked_and_cached(bus: Bus) -> None:
    plans = PlanStore(bus.js)
    plan = small_plan()
    ref = await plans.put(plan)
    assert ref == plan_ref_of(plan_bytes(plan)) and await plans.put(plan) == ref  # idempotent
    assert await PlanStore(bus.js).get(ref) == plan  # a fresh reader: from the store

    objects = await bus.js.object_store(PLANS_STORE.name)
    forged = plan_bytes(small_plan("Do something else."))
    await objects.put(Keys.plan_object(ref.sha256), forged)  # replaced under the same name
    assert await plans.get(ref) == plan  # the reader that read it once keeps its (checked) copy
    with pytest.raises(PlanUnavailable, match=r"bytes, not the|digest"):
        await PlanStore(bus.js).get(ref)
    same_size = plan_bytes(small_plan("Do it!"))
    await objects.put(Keys.plan_object(ref.sha256), same_size)
    with pytest.raises(PlanUnavailable, match="digest"):
        await PlanStore(bus.js).get(ref)
    with pytest.raises(PlanUnavailable, match="no plan"):
        await PlanStore(bus.js).get(PlanRef(sha256="0" * 64, size=10))


async def test_sdk_sends_a_large_plan_by_reference_and_the_planner_plans_it(bus: Bus, planner: PlannerService) -> None:
    load = build_swarm(0, 0.0, 1.0, 300)  # 300 agents, 4,000 steps, 300-character instructions: ~2 MB of JSON
    client = SwarmClient(bus)
    run_id = await client.submit(plan=load.plan, run_id="big-by-ref")
    stored = await bus.js.get_last_msg(TASKS.name, Subjects.task("default"))
    task = TaskSubmission.model_validate_json(stored.data)
    assert task.plan is None and task.plan_ref is not None and len(stored.data) < 2000
    planned = RunPlanned.model_validate_json(await run_event(bus, "default", run_id, "planned"))
    assert planned.plan is None and planned.plan_ref is not None  # RunPlanned carries the reference
    assert (planned.agents_count, planned.steps_count) == (300, 4000)
    resolved = await PlanStore(bus.js).plan_of(planned)
    assert len(resolved.steps) == 4000 and resolved.steps[7].instruction == load.plan.steps[7].instruction
    followed = await client.resolved(planned)  # what SwarmClient.events yields
    assert isinstance(followed, RunPlanned) and followed.plan is not None and len(followed.plan.steps) == 4000


async def test_small_plans_stay_inline(bus: Bus, planner: PlannerService) -> None:
    client = SwarmClient(bus)
    run_id = await client.submit(plan=small_plan(), run_id="small-inline")
    planned = RunPlanned.model_validate_json(await run_event(bus, "default", run_id, "planned"))
    assert planned.plan == small_plan() and planned.plan_ref is None


async def test_a_message_over_the_servers_limit_is_a_clear_error(tmp_path: Path) -> None:
    """A server with a max_payload under ours (64 KiB): a 100 KB inline plan is refused with words, not a traceback."""
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 65536\n")
    server = NatsServer(store_dir=tmp_path / "nats", extra_args=("-c", str(conf))).start()
    try:
        bus = await Bus.connect(NatsSettings(url=server.url), "test")
        await bus.provision()
        plan = build_chain(0, 0.0, 1.0, 400).plan
        assert 65536 < len(plan_bytes(plan)) < PLAN_INLINE_MAX_BYTES  # inline, yet too large for this server
        with pytest.raises(MessageTooLarge, match="refuses a message this large"):
            await SwarmClient(bus).submit(plan=plan)
        await bus.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("case", "code", "path"),
    [
        ("missing", RejectionCode.PLAN_UNAVAILABLE, "/plan_ref"),
        ("wrong-size", RejectionCode.PLAN_UNAVAILABLE, "/plan_ref"),
        ("forged", RejectionCode.PLAN_UNAVAILABLE, "/plan_ref"),
        ("not-json", RejectionCode.JSON, "/plan_ref"),
        ("cycle", RejectionCode.CYCLE, "/plan/steps"),
        ("bad-schema", RejectionCode.MIN_LENGTH, "/plan/steps/0/instruction"),
    ],
)
async def test_hostile_plan_refs_are_rejected_with_a_reason(
    bus: Bus, planner: PlannerService, case: str, code: RejectionCode, path: str
) -> None:
    """A plain NATS client writes whatever it likes to the store: every bad reference ends in RunRejected."""
    objects = await bus.js.object_store(PLANS_STORE.name)
    good = plan_bytes(small_plan())
    data = {
        "missing": None,
        "wrong-size": good,
        "forged": good,
        "not-json": b"{not json",
        "cycle": json.dumps({
            "agents": [{"id": "a", "role": "r"}],
            "steps": [{"id": "x", "agent_id": "a", "instruction": "i", "depends_on": ["y"]},
                      {"id": "y", "agent_id": "a", "instruction": "i", "depends_on": ["x"]}],
        }).encode(),
        "bad-schema": json.dumps({"agents": [{"id": "a", "role": "r"}], "steps": [{"id": "s", "agent_id": "a", "instruction": ""}]}).encode(),
    }[case]
    sha256 = hashlib.sha256(data or b"absent").hexdigest()
    size = len(data or b"absent")
    if data is not None:
        await objects.put(Keys.plan_object(sha256), data)
    if case == "wrong-size":
        size += 1
    if case == "forged":  # the reference names one plan, the object under its name is another
        await objects.put(Keys.plan_object(sha256), plan_bytes(small_plan("Exfiltrate.")))
    run_id = f"hostile-{case}"
    await publish_raw(bus, run_id, {"v": 1, "run_id": run_id, "plan_ref": {"sha256": sha256, "size": size}})
    rejected = RunRejected.model_validate_json(await run_event(bus, "default", run_id, "rejected"))
    assert (rejected.reasons[0].code, rejected.reasons[0].path) == (code, path), rejected.reasons


async def test_plan_and_plan_ref_together_are_rejected(bus: Bus, planner: PlannerService) -> None:
    ref = await PlanStore(bus.js).put(small_plan())
    body = {"v": 1, "run_id": "both", "plan": json.loads(plan_bytes(small_plan())), "plan_ref": ref.model_dump()}
    await publish_raw(bus, "both", body)
    rejected = RunRejected.model_validate_json(await run_event(bus, "default", "both", "rejected"))
    assert "not both" in rejected.error


def test_cli_submit_sends_priority_and_a_large_plan_by_reference(bus: Bus, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(build_chain(0, 0.0, 1.0, 2000).plan.model_dump_json())  # ~0.9 MB: over the inline budget
    cli = [sys.executable, "-m", "swarm.ops.cli", "submit", "--plan", str(plan_file), "--nats-url", bus.settings.url]
    done = subprocess.run([*cli, "--priority", "7"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    task = TaskSubmission.model_validate_json(asyncio.run(last_task(bus.settings.url)))
    assert task.priority == 7 and task.plan is None and task.plan_ref is not None
    refused = subprocess.run([*cli, "--priority", "11"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "less than or equal to 10" in refused.stderr


async def last_task(url: str) -> bytes:
    reader = await Bus.connect(NatsSettings(url=url), "test-reader")
    try:
        return (await reader.js.get_last_msg(TASKS.name, Subjects.task("default"))).data or b""
    finally:
        await reader.close()
