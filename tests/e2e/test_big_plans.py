"""The headline plan at realistic size: 300 agents, 4,000 steps, 300-character instructions (~2 MB of JSON).

It runs to completion from the CLI (the SDK stores the plan by reference) and from a plain nats-py client
that does by hand what proto/README.md says: put the plan in the object store, send its reference.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import DeliverPolicy

from loadtest.scenarios import build_swarm
from swarm.client import SwarmClient
from swarm.contracts import PLAN_INLINE_MAX_BYTES, PLANS_STORE, RunPlanned, RunRecord, RunStatus, Subjects
from swarm.ops.queries import query_via_recorder
from swarm.ops.stack import Stack
from swarm.settings import NatsSettings, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("swarm-big")
    settings = StackSettings(
        home=home, nats_port=0, nats_monitor_port=0, gateway_backend="sim", workers=2
    )
    os.environ["SWARM_GATEWAY_SIM_LATENCY_SCALE"] = "0"  # the plan's own sim latencies are 0 too
    running = Stack(settings)
    running.up(timeout_s=180)
    yield running
    running.down()


@pytest.fixture(scope="module")
def plan_json() -> bytes:
    plan = build_swarm(0, 0.0, 1.0, 300).plan
    assert (len(plan.agents), len(plan.steps)) == (300, 4000)
    assert {len(s.instruction) for s in plan.steps} == {300}
    data = plan.model_dump_json().encode()
    assert len(data) > 1_048_576  # over NATS' default max_payload: it can only go by reference
    return data


async def plan_steps_recorded(nats_url: str, run_id: str) -> int:
    client = await SwarmClient.connect(NatsSettings(url=nats_url))
    try:
        rows = await query_via_recorder(
            client.bus.nc, "SELECT count() AS n FROM swarm.plan_steps WHERE run_id = {run:String}", {"run": run_id}
        )
    finally:
        await client.close()
    return int(rows[0]["n"])


async def record_of(nats_url: str, run_id: str) -> tuple[RunRecord, RunPlanned]:
    async with await SwarmClient.connect(NatsSettings(url=nats_url)) as client:
        for _ in range(100):  # the run index trails RUNS by a moment (the recorder derives it)
            record = {r.run_id: r for r in await client.runs(limit=10)}.get(run_id)
            if record is not None and record.status is RunStatus.COMPLETED:
                break
            await asyncio.sleep(0.1)
        assert record is not None
        planned = RunPlanned.model_validate_json(
            (await client.bus.js.get_last_msg("RUNS", Subjects.run_event("default", run_id, "planned"))).data
        )
    return record, planned


def test_cli_submits_and_completes_the_headline_plan(stack: Stack, plan_json: bytes, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(plan_json)
    done = subprocess.run(
        [sys.executable, "-m", "swarm.ops.cli", "submit", "--plan", str(plan_file), "--follow", "--nats-url", stack.nats_url],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4000 succeeded, 0 failed of 4000" in done.stdout, done.stdout[-3000:]
    run_id = done.stdout.split("Submitted run ", 1)[1].split()[0]
    record, planned = asyncio.run(record_of(stack.nats_url, run_id))
    assert record.status is RunStatus.COMPLETED and record.steps_total == 4000
    assert planned.plan is None and planned.plan_ref is not None  # the planned event carries the reference


async def test_plain_nats_client_submits_by_reference_and_completes(stack: Stack, plan_json: bytes) -> None:
    """Only nats-py and the documented names: object store 'swarm_plans', object 'plan-sha256-<hex>'."""
    assert len(plan_json) > PLAN_INLINE_MAX_BYTES
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        digest = hashlib.sha256(plan_json).hexdigest()
        await (await js.object_store(PLANS_STORE.name)).put(f"plan-sha256-{digest}", plan_json)
        run_id = "plain-nats-4000"
        sub = await js.subscribe(f"swarm.run.default.{run_id}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        body = {"v": 1, "run_id": run_id, "plan_ref": {"sha256": digest, "size": len(plan_json)}}
        await js.publish("swarm.tasks.default", json.dumps(body).encode(), headers={"Nats-Msg-Id": run_id})
        kinds = []
        deadline = asyncio.get_running_loop().time() + RUN_TIMEOUT_S
        while not kinds or kinds[-1] not in ("completed", "failed", "cancelled", "rejected"):
            msg = await sub.next_msg(timeout=deadline - asyncio.get_running_loop().time())
            event = json.loads(msg.data)
            kinds.append(event["kind"])
            if event["kind"] == "planned":
                assert event["plan_ref"]["size"] > 0 and event.get("plan") is None and event["steps_count"] == 4000
        assert kinds[-1] == "completed", kinds[-5:]
        final = json.loads(msg.data)
        assert final["summary"]["steps_succeeded"] == 4000
    finally:
        await nc.close()
    for _ in range(100):  # the recorder resolved the reference: the whole DAG is in plan_steps
        if await plan_steps_recorded(stack.nats_url, run_id) == 4000:
            break
        await asyncio.sleep(0.3)
    assert await plan_steps_recorded(stack.nats_url, run_id) == 4000
