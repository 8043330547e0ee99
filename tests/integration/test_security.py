"""The generated NATS authorization config, enforced by a real nats-server: refused and allowed flows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from swarm.bus import Bus
from swarm.contracts import RUN_STATE_BUCKET, RUNS, TASKS, RunPlanned, Subjects, TaskSubmission
from swarm.natsserver import NatsServer
from swarm.security import (
    ADMIN_USER,
    SYSTEM_USER,
    inbox_prefix,
    render_nats_auth,
    tenant_user,
    user_permissions,
)
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex")
PASSWORDS = {user: f"pw-{user}" for user in [*user_permissions(TENANTS), SYSTEM_USER]}


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """nats-server with the generated accounts and users (bcrypt hashes), JetStream in the SWARM account."""
    home = tmp_path_factory.mktemp("secured-nats")
    config = home / "auth.conf"
    config.write_text(render_nats_auth(PASSWORDS, TENANTS))
    server = NatsServer(
        store_dir=home / "store", log_file=home / "nats.log", extra_args=("-c", str(config))
    ).start()
    yield server
    server.stop()


class Violations:
    """The asynchronous -ERR lines the server sends a connection (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    async def wait_for(self, fragment: str, timeout_s: float = 3.0) -> str:
        for _ in range(int(timeout_s / 0.05)):
            for error in self.errors:
                if fragment.lower() in error:
                    return error
            await asyncio.sleep(0.05)
        raise AssertionError(f"no error containing {fragment!r}: {self.errors}")


async def connect(server: NatsServer, user: str, violations: Violations | None = None) -> NatsClient:
    """A raw connection as `user`; tenant users on their private inbox prefix."""
    options: dict[str, object] = {"user": user, "password": PASSWORDS[user], "allow_reconnect": False}
    if user.startswith("tenant-"):
        options["inbox_prefix"] = inbox_prefix(user)
    if violations is not None:
        options["error_cb"] = violations.record
    return await nats.connect(server.url, **options)


@pytest.fixture
async def admin(secured_server: NatsServer) -> AsyncIterator[Bus]:
    """The operator's Bus, streams and buckets provisioned."""
    bus = await Bus.connect(
        NatsSettings(url=secured_server.url, user=ADMIN_USER, password=PASSWORDS[ADMIN_USER]), "admin"
    )
    await bus.provision()
    yield bus
    await bus.close()


async def follow(nc: NatsClient, tenant: str, run_id: str) -> nats.aio.subscription.Subscription:
    """What a tenant client does to watch its run: an ordered consumer on RUNS, its filter named in the API subject."""
    name = nc._nuid.next().decode()
    filter_subject = Subjects.run_all(tenant, run_id)
    config = ConsumerConfig(
        name=name, filter_subject=filter_subject, deliver_subject=nc.new_inbox(), deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE, max_deliver=1, flow_control=True, idle_heartbeat=5.0, mem_storage=True,
        num_replicas=1, inactive_threshold=5.0,
    )  # fmt: skip
    sub = await nc.subscribe(config.deliver_subject)
    # nats-py picks `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>` when the config has a name.
    await nc.jetstream(timeout=2)._jsm.add_consumer(RUNS.name, config)
    return sub


async def test_allowed_flow_tenant_submits_and_follows_its_own_run(
    secured_server: NatsServer, admin: Bus
) -> None:
    client = await connect(secured_server, tenant_user("acme"))
    planner = await Bus.connect(
        NatsSettings(url=secured_server.url, user="planner", password=PASSWORDS["planner"]), "planner"
    )
    try:
        task = TaskSubmission(run_id="acme-run-1", tenant="acme", goal="Explain tides")
        ack = await client.jetstream(timeout=2).publish(
            Subjects.task("acme"), task.model_dump_json().encode(), headers={"Nats-Msg-Id": task.run_id}
        )
        assert ack.stream == TASKS.name
        sub = await follow(client, "acme", task.run_id)
        planned = RunPlanned.model_validate(
            {
                "run_id": task.run_id, "tenant": "acme", "goal": "Explain tides", "source": "template",
                "submitted_at": task.submitted_at,
                "plan": {"agents": [{"id": "a", "role": "r"}], "steps": [{"id": "s", "agent_id": "a", "instruction": "i"}]},
            }
        )  # fmt: skip
        await planner.publish(Subjects.run_event("acme", task.run_id, "planned"), planned)
        msg = await sub.next_msg(timeout=3)
        assert msg.subject == Subjects.run_event("acme", task.run_id, "planned")
        assert RunPlanned.model_validate_json(msg.data).run_id == task.run_id
        # The client may cancel its own run.
        await client.jetstream(timeout=2).publish(Subjects.run_event("acme", task.run_id, "cancel"), b"{}")
    finally:
        await client.close()
        await planner.close()


async def test_worker_cannot_submit_tasks(secured_server: NatsServer, admin: Bus) -> None:
    violations = Violations()
    worker = await connect(secured_server, "worker", violations)
    try:
        before = (await admin.js.stream_info(TASKS.name)).state.messages
        await worker.publish(Subjects.task("default"), b'{"run_id": "forged", "goal": "x"}')
        await worker.flush()
        error = await violations.wait_for(f'publish to "{Subjects.task("default")}"')
        assert "permissions violation" in error
        with pytest.raises(nats.errors.TimeoutError):  # a JetStream publish gets no ack either
            await worker.jetstream(timeout=0.5).publish(Subjects.task("default"), b"{}")
        assert (await admin.js.stream_info(TASKS.name)).state.messages == before
    finally:
        await worker.close()


async def test_worker_cannot_write_run_state(secured_server: NatsServer, admin: Bus) -> None:
    violations = Violations()
    worker = await connect(secured_server, "worker", violations)
    try:
        kv = await worker.jetstream(timeout=0.5).key_value(RUN_STATE_BUCKET.name)  # it may look the bucket up
        with pytest.raises(nats.errors.TimeoutError):
            await kv.put("forged-run", b"{}")
        assert "permissions violation" in await violations.wait_for(f"$kv.{RUN_STATE_BUCKET.name}.forged-run")
        state = await admin.kv(RUN_STATE_BUCKET)
        with pytest.raises(KeyNotFoundError):
            await state.get("forged-run")
    finally:
        await worker.close()


async def test_tenant_cannot_read_another_tenants_runs(secured_server: NatsServer, admin: Bus) -> None:
    await admin.js.publish(Subjects.run_event("globex", "globex-run-1", "progress"), b'{"secret": true}')
    violations = Violations()
    acme = await connect(secured_server, tenant_user("acme"), violations)
    try:
        # A core subscription to the other tenant's subjects.
        await acme.subscribe(Subjects.run_all("globex", "globex-run-1"))
        await acme.flush()
        assert "permissions violation" in await violations.wait_for(
            'subscription to "swarm.run.globex.globex-run-1.>"'
        )
        # An ordered consumer filtered to the other tenant: the API subject is refused.
        with pytest.raises(nats.errors.TimeoutError):
            await follow(acme, "globex", "globex-run-1")
        await violations.wait_for("$js.api.consumer.create.runs.")
        # The legacy create subject (filter only in the body) is refused too.
        legacy = ConsumerConfig(
            filter_subject=Subjects.run_all("globex", "globex-run-1"), deliver_subject=acme.new_inbox()
        )
        with pytest.raises(nats.errors.TimeoutError):
            await acme.jetstream(timeout=0.5)._jsm.add_consumer(RUNS.name, legacy)
        await violations.wait_for('publish to "$js.api.consumer.create.runs"')
        # Its own API subject with another tenant's filter in the body: the server refuses the mismatch.
        body = {"stream_name": RUNS.name, "config": ConsumerConfig(
            name="sneaky", filter_subject=Subjects.run_all("globex", "globex-run-1"), deliver_subject=acme.new_inbox(),
        ).as_dict()}  # fmt: skip
        reply = await acme.request(
            f"$JS.API.CONSUMER.CREATE.RUNS.sneaky.{Subjects.run_all('acme', 'x')}",
            json.dumps(body).encode(),
            timeout=2,
        )
        # 10131: the body's filter does not match the create subject.
        assert json.loads(reply.data)["error"]["err_code"] == 10131
        # Nor can it read stream or consumer info, or another user's inbox.
        await acme.publish(f"$JS.API.STREAM.INFO.{RUNS.name}", b"", reply=acme.new_inbox())
        await violations.wait_for(f'publish to "$js.api.stream.info.{RUNS.name.lower()}"')
        await acme.subscribe("_INBOX.>")
        await violations.wait_for('subscription to "_inbox.>"')
        # Nor submit as the other tenant.
        await acme.publish(Subjects.task("globex"), b"{}")
        await violations.wait_for('publish to "swarm.tasks.globex"')
    finally:
        await acme.close()


async def test_passwords_are_bcrypt_hashes_and_checked(secured_server: NatsServer) -> None:
    config = render_nats_auth(PASSWORDS, TENANTS)
    assert all(password not in config for password in PASSWORDS.values())
    assert config.count('"$2b$') == len(PASSWORDS)
    with pytest.raises(nats.errors.Error):
        await nats.connect(
            secured_server.url,
            user="worker",
            password="wrong",
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    nc = await connect(secured_server, "worker")
    await nc.close()
