"""The planner over mTLS: its faststream connection presents the client certificate and its inbox prefix.

nats-server requires a client certificate (`verify: true`) and the generated permissions; the planner runs as
a process with `SWARM_NATS_TLS_*`, plans a tenant's task, and the server logs no permission violation (its
pull requests reply on `_INBOX_planner`, the only inbox its user may read).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from swarm.bus import Bus, tls_options
from swarm.client import SwarmClient
from swarm.contracts import AgentSpec, Plan, StepSpec
from swarm.ops.natsserver import NatsServer
from swarm.ops.security import (
    SYSTEM_USER,
    provision_tenant,
    provision_user,
    render_nats_auth,
    tenant_user,
    user_permissions,
)
from swarm.settings import NatsSettings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
TENANT = "acme"
PASSWORDS = {user: f"pw-{user}" for user in [*user_permissions([TENANT]), SYSTEM_USER]}


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Path]]:
    """nats-server requiring client certificates (from `make certs`' script), with the generated accounts."""
    home = tmp_path_factory.mktemp("mtls")
    certs = home / "certs"
    subprocess.run([str(ROOT / "compose/tls/make-certs.sh"), str(certs)], check=True, capture_output=True)
    (home / "auth.conf").write_text(render_nats_auth(PASSWORDS, [TENANT], hashed=False))
    (home / "nats.conf").write_text(
        f'tls {{ cert_file: "{certs}/server.pem", key_file: "{certs}/server-key.pem", '
        f'ca_file: "{certs}/ca.pem", verify: true }}\ninclude "auth.conf"\n'
    )
    server = NatsServer(
        store_dir=home / "store", log_file=home / "nats.log", extra_args=("-c", str(home / "nats.conf"))
    ).start()
    yield server, home
    server.stop()


def tls_settings(server: NatsServer, home: Path, user: str) -> NatsSettings:
    certs = home / "certs"
    return NatsSettings(
        url=server.url, user=user, password=PASSWORDS[user], tls_ca_file=certs / "ca.pem",
        tls_cert_file=certs / "client.pem", tls_key_file=certs / "client-key.pem",
    )  # fmt: skip


def start_planner(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.planner"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_planner_plans_over_mtls_with_its_full_identity(mtls_server: tuple[NatsServer, Path]) -> None:
    server, home = mtls_server
    # Without a client certificate the server refuses the connection: the planner must present one.
    with pytest.raises((nats.errors.Error, ssl.SSLError, OSError)):
        await nats.connect(
            server.url, user="planner", password=PASSWORDS["planner"], allow_reconnect=False,
            max_reconnect_attempts=0, connect_timeout=2,
            tls=ssl.create_default_context(cafile=str(home / "certs/ca.pem")),
        )  # fmt: skip
    admin = await Bus.connect(tls_settings(server, home, "admin"), "admin")
    await admin.provision()
    await admin.close()
    provisioner = await nats.connect(
        server.url, user=provision_user(TENANT), password=PASSWORDS[provision_user(TENANT)],
        inbox_prefix=f"_INBOX_{provision_user(TENANT)}",
        **tls_options(tls_settings(server, home, "admin")),
    )  # fmt: skip
    await provision_tenant(provisioner, TENANT)
    await provisioner.close()
    settings = tls_settings(server, home, "planner")
    env = {
        **os.environ, "SWARM_NATS_URL": server.url, "SWARM_NATS_USER": "planner",
        "SWARM_NATS_PASSWORD": PASSWORDS["planner"], "SWARM_NATS_TLS_CA_FILE": str(settings.tls_ca_file),
        "SWARM_NATS_TLS_CERT_FILE": str(settings.tls_cert_file), "SWARM_NATS_TLS_KEY_FILE": str(settings.tls_key_file),
    }  # fmt: skip
    planner = start_planner(env, home / "planner.log")
    try:
        plan = Plan(
            agents=(AgentSpec(id="a0", role="researcher"),),
            steps=(StepSpec(id="s0", agent_id="a0", instruction="Say hello."),),
        )
        async with await SwarmClient.connect(tls_settings(server, home, tenant_user(TENANT))) as client:
            run_id = await client.submit(plan=plan, tenant=TENANT, run_id="mtls-1")

            async def first_events() -> list[str]:
                kinds = []
                async for event in client.events(run_id, TENANT):
                    kinds.append(event.kind)
                    if len(kinds) == 2:
                        break
                return kinds

            try:
                kinds = await asyncio.wait_for(first_events(), 60)
            except TimeoutError:
                pytest.fail(f"no plan over mTLS: {(home / 'planner.log').read_text()[-3000:]}")
        assert kinds == ["accepted", "planned"]  # the planner published both over mTLS
    finally:
        planner.terminate()
        planner.wait(30)
    violations = [line for line in (home / "nats.log").read_text().splitlines() if "Violation" in line]
    assert not violations, violations
