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

import nats
import pytest

from swarm.contracts import AgentSpec, Plan, RunCompleted, StepSpec, Subjects, TaskSubmission
from swarm.natsserver import NatsServer
from swarm.security import SYSTEM_USER, inbox_prefix, render_nats_auth, tenant_user, user_permissions
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
    nc = await nats.connect(server.url, user=user, password=PASSWORDS[user], inbox_prefix=inbox_prefix(user))
    try:
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
        task = TaskSubmission(run_id="secured-1", tenant=TENANT, plan=Plan(agents=agents, steps=steps))
        follow = await _follow(nc, task.run_id)
        await nc.jetstream(timeout=5).publish(
            Subjects.task(TENANT), task.model_dump_json().encode(), headers={"Nats-Msg-Id": task.run_id}
        )
        kinds = []
        while not kinds or kinds[-1] not in ("completed", "failed", "rejected", "cancelled"):
            msg = await follow.next_msg(timeout=60)
            if msg.data:  # idle heartbeats carry no data
                kinds.append(msg.subject.rsplit(".", 1)[-1])
        assert kinds[0] == "planned" and kinds[-1] == "completed", kinds
        assert RunCompleted.model_validate_json(msg.data).summary.steps_succeeded == 3
    finally:
        await nc.close()
    # Every service did all of that without a single refused publish or subscription.
    log = (home / "nats.log").read_text()
    # nats-server logs "Publish Violation" / "Subscribe Violation".
    refused = [line for line in log.splitlines() if "Violation" in line]
    assert not refused, refused


async def _follow(nc: nats.NATS, run_id: str):  # type: ignore[no-untyped-def]
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(
        name=nc._nuid.next().decode(), filter_subject=Subjects.run_all(TENANT, run_id), deliver_subject=nc.new_inbox(),
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, flow_control=True, idle_heartbeat=5.0,
        mem_storage=True, num_replicas=1, inactive_threshold=5.0,
    )  # fmt: skip
    sub = await nc.subscribe(config.deliver_subject)
    await nc.jetstream(timeout=5)._jsm.add_consumer("RUNS", config)
    return sub
