"""Every service under its own least-privilege NATS user: a tenant's run completes and nothing is refused.

The proof that the generated permissions are not only tight but sufficient: the whole stack runs as
processes against a nats-server with the generated config, and the server logs no permission violation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.scenarios import chain_plan
from swarm.client import SwarmClient
from swarm.contracts import PLAN_INLINE_MAX_BYTES, AgentSpec, Plan, RunCompleted, StepSpec
from swarm.natsserver import NatsServer
from swarm.security import SYSTEM_USER, inbox_prefix, render_nats_auth, tenant_user, user_permissions
from swarm.settings import NatsSettings
from swarm.stack import SERVICE_ORDER

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TENANT = "acme"
PASSWORDS = {user: f"pw-{user}" for user in [*user_permissions([TENANT]), SYSTEM_USER]}


@pytest.fixture(scope="module")
def secured_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Path]]:
    home = tmp_path_factory.mktemp("secured-stack")
    config = home / "auth.conf"
    # Clear passwords: hashing is proven in test_security.
    config.write_text(render_nats_auth(PASSWORDS, [TENANT], hashed=False))
    server = NatsServer(
        store_dir=home / "nats", log_file=home / "nats.log", extra_args=("-c", str(config))
    ).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for service in SERVICE_ORDER:
            env = {
                **os.environ, "SWARM_NATS_URL": server.url, "SWARM_NATS_USER": service.name,
                "SWARM_NATS_PASSWORD": PASSWORDS[service.name], "SWARM_CLICKHOUSE_PATH": str(home / "clickhouse"),
                "SWARM_GATEWAY_BACKEND": "sim", "SWARM_GATEWAY_SIM_LATENCY_SCALE": "0.02",
            }  # fmt: skip
            with open(home / f"{service.name}.log", "ab") as out:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", service.module], env=env, stdout=out, stderr=subprocess.STDOUT
                    )
                )
        # Each service's own user sends its own probe, as the compose health check does.
        for service in SERVICE_ORDER:
            env = {**os.environ, "SWARM_NATS_URL": server.url, "SWARM_NATS_USER": service.name,
                   "SWARM_NATS_PASSWORD": PASSWORDS[service.name]}  # fmt: skip
            for _ in range(60):
                assert all(p.poll() is None for p in processes), f"a service exited: see {home}"
                check = subprocess.run(
                    [sys.executable, "-m", "swarm.health", service.name, "--wait", "1"],
                    env=env,
                    capture_output=True,
                )
                if check.returncode == 0:
                    break
            else:
                pytest.fail(
                    f"{service.name} never healthy: {(home / f'{service.name}.log').read_text()[-2000:]}"
                )
        yield server, home
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        server.stop()


async def test_a_tenant_run_completes_with_every_service_least_privileged(
    secured_stack: tuple[NatsServer, Path],
) -> None:
    server, home = secured_stack
    user = tenant_user(TENANT)
    # The SDK as the tenant: submit, follow and cancel are all a tenant's NATS user may do.
    settings = NatsSettings(url=server.url, user=user, password=PASSWORDS[user], inbox_prefix=inbox_prefix(user))
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
    assert kinds[0] == "planned" and kinds[-1] == "completed", kinds
    final = events[-1]
    assert isinstance(final, RunCompleted) and final.summary.steps_succeeded == 3
    # Every service did all of that without a single refused publish or subscription.
    log = (home / "nats.log").read_text()
    # nats-server logs "Publish Violation" / "Subscribe Violation".
    refused = [line for line in log.splitlines() if "Violation" in line]
    assert not refused, refused


async def test_a_tenant_submits_a_plan_by_reference_and_every_service_reads_it(
    secured_stack: tuple[NatsServer, Path],
) -> None:
    """Over the inline budget: the tenant writes the plans store, planner/dispatcher/recorder read it, unrefused."""
    server, home = secured_stack
    user = tenant_user(TENANT)
    settings = NatsSettings(url=server.url, user=user, password=PASSWORDS[user], inbox_prefix=inbox_prefix(user))
    plan = chain_plan(40, latency_scale=0.0, instruction_chars=8000)
    assert len(plan.plan.model_dump_json()) > PLAN_INLINE_MAX_BYTES
    async with await SwarmClient.connect(settings) as client:
        run_id = await client.submit(plan=plan.plan, tenant=TENANT, run_id="secured-by-ref")
        events = [event async for event in client.events(run_id, TENANT)]
    assert events[0].kind == "planned" and events[0].plan_ref is not None  # type: ignore[union-attr]
    assert events[0].plan == plan.plan  # type: ignore[union-attr]  # the SDK resolved it for the follower
    assert isinstance(events[-1], RunCompleted) and events[-1].summary.steps_succeeded == 40
    refused = [line for line in (home / "nats.log").read_text().splitlines() if "Violation" in line]
    assert not refused, refused
