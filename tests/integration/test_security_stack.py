"""Every service under its own least-privilege NATS user, tenants in their own accounts: runs complete and
nothing is refused.

The proof that the generated permissions are not only tight but sufficient: the whole stack runs as
processes against a nats-server with the generated config (`loadtest.secured_stack`), a tenant's run
completes through its account, the full 300-agent/4,000-step load test passes, and the server logs no
permission violation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.scenarios import chain_plan
from loadtest.secured_stack import SecuredStack, secured_stack
from swarm.client import MessageTooLarge, SwarmClient
from swarm.contracts import (
    MESSAGE_BODY_MAX_BYTES,
    PLAN_INLINE_MAX_BYTES,
    AgentSpec,
    Plan,
    RunCompleted,
    StepSpec,
)
from swarm.ops.security import ADMIN_USER, tenant_user
from swarm.settings import NatsSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TENANT = "acme"
DEDICATED_POOL = "acmepool"  # acme's steps run there, under the pool's own user (swarm.ops.security)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredStack]:
    env = {"SWARM_GATEWAY_SIM_LATENCY_SCALE": "0.02", "SWARM_WORKER_CONCURRENCY": "256", "SWARM_GATEWAY_MAX_QUEUE": "1024"}
    with secured_stack(
        tmp_path_factory.mktemp("secured-stack"), service_env=env, dedicated_pools=(f"{DEDICATED_POOL}:{TENANT}",)
    ) as started:
        yield started


async def test_a_tenant_run_completes_with_every_service_least_privileged(stack: SecuredStack) -> None:
    assert stack.server is not None
    user = tenant_user(TENANT)
    # The SDK as the tenant: submit, follow and cancel are all its NATS user may do (its inbox prefix,
    # `_INBOX_tenant-acme`, is the one `identity_options` derives from the user name).
    settings = NatsSettings(url=stack.server.url, user=user, password=stack.passwords[user])
    agents = (
        AgentSpec(id="a0", role="researcher"),
        AgentSpec(id="a1", role="researcher"),
        AgentSpec(id="lead", role="editor"),
    )
    steps = (
        StepSpec(id="m0", agent_id="a0", instruction="Part 0."),
        StepSpec(id="m1", agent_id="a1", instruction="Part 1."),
        StepSpec(id="reduce", agent_id="lead", instruction="Combine.", depends_on=("m0", "m1")),
    )
    async with await SwarmClient.connect(settings) as client:
        run_id = await client.submit(plan=Plan(agents=agents, steps=steps), tenant=TENANT, run_id="secured-1")
        events = [event async for event in client.events(run_id, TENANT)]
    kinds = [event.kind for event in events]
    assert kinds[:2] == ["accepted", "planned"] and kinds[-1] == "completed", kinds
    final = events[-1]
    assert isinstance(final, RunCompleted) and final.summary.steps_succeeded == 3
    # On acme's dedicated pool: its one worker (the stack's last process) ran every step.
    admin = NatsSettings(url=stack.server.url, user=ADMIN_USER, password=stack.passwords[ADMIN_USER])
    async with await SwarmClient.connect(admin) as operator:
        workers = {e.worker_id.rpartition(":")[2] for e in await operator.step_events(run_id) if e.kind == "succeeded"}
    assert workers == {str(stack.processes[-1].pid)}, workers
    # Every service did all of that without a single refused publish or subscription.
    assert not stack.violations()


def test_the_full_load_test_passes_with_security_on(stack: SecuredStack, tmp_path: Path) -> None:
    """300 agents, 4,000 steps at zero simulated latency, driven as `admin`: every step accounted for."""
    assert stack.server is not None
    report_file = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "swarm.ops.cli", "loadtest", "--scenario", "swarm-300x4000", "--latency-scale", "0",
         "--nats-url", stack.server.url, "--no-floor", "--json", str(report_file), "--timeout-s", "300"],
        env={**os.environ, **stack.env_of(ADMIN_USER)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert (report["steps_total"], report["steps_succeeded"], report["steps_lost"]) == (4000, 4000, 0)
    assert not stack.violations()


async def test_a_tenants_large_plan_goes_inline_then_by_reference_and_an_oversized_one_is_refused(
    stack: SecuredStack,
) -> None:
    """A tenant account does not reach the services' plans store: a plan over the inline budget but within one
    message goes inline and the planner stores it by reference for the run; a larger one is a clear error."""
    assert stack.server is not None
    user = tenant_user(TENANT)
    settings = NatsSettings(url=stack.server.url, user=user, password=stack.passwords[user])
    plan = chain_plan(30, latency_scale=0.0, instruction_chars=8000).plan
    assert PLAN_INLINE_MAX_BYTES < len(plan.model_dump_json()) < MESSAGE_BODY_MAX_BYTES
    huge = chain_plan(200, latency_scale=0.0, instruction_chars=8000).plan
    async with await SwarmClient.connect(settings) as client:
        run_id = await client.submit(plan=plan, tenant=TENANT, run_id="secured-big-inline")
        events = [event async for event in client.events(run_id, TENANT)]
        with pytest.raises(MessageTooLarge, match="out of this identity's reach"):
            await client.submit(plan=huge, tenant=TENANT, run_id="secured-too-big")
    planned = events[1]  # after 'accepted'
    assert planned.kind == "planned" and planned.plan_ref is not None  # type: ignore[union-attr]  # stored by the planner
    assert isinstance(events[-1], RunCompleted) and events[-1].summary.steps_succeeded == 30
    assert not stack.violations()
