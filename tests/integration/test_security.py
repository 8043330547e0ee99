"""The generated NATS accounts and users, enforced by a real nats-server: every attempt denied or harmless.

Each test names what it shows: **denied** (the server refuses it: a permission violation, or an API error)
or **harmless** (the server accepts it, and the test proves nothing outside the actor's own account changed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError

from services.aggregator.synthesis import EXECUTED_CONSUMER
from services.dispatcher.dispatching import PLANS_CONSUMER
from swarm.bus import Bus
from swarm.contracts import (
    OUTPUTS_BUCKET,
    PAYLOADS_STORE,
    RUN_INDEX_BUCKET,
    RUN_STATE_BUCKET,
    RUNS,
    TASKS,
    RunPlanned,
    Subjects,
    TaskSubmission,
)
from swarm.ops.natsserver import NatsServer
from swarm.ops.security import (
    ADMIN_USER,
    SYSTEM_USER,
    TenantLimits,
    inbox_prefix,
    provision_tenant,
    provision_user,
    render_nats_auth,
    tenant_user,
    user_permissions,
)
from swarm.payloads import Payloads
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")  # initech: the one that exhausts its consumers
PASSWORDS = {user: f"pw-{user}" for user in [*user_permissions(TENANTS), SYSTEM_USER]}
# Low, so a test reaches it quickly; deployments set SWARM_SECURITY_TENANT_MAX_CONSUMERS.
LIMITS = TenantLimits(max_consumers=6)
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """nats-server with the generated accounts (SWARM, one per tenant) and users, bcrypt hashes."""
    home = tmp_path_factory.mktemp("secured-nats")
    config = home / "auth.conf"
    config.write_text(render_nats_auth(PASSWORDS, TENANTS, limits=LIMITS))
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


def settings_of(server: NatsServer, user: str) -> NatsSettings:
    return NatsSettings(url=server.url, user=user, password=PASSWORDS[user], request_timeout_s=2)


async def connect(server: NatsServer, user: str, violations: Violations | None = None) -> NatsClient:
    """A raw connection as `user`, on its own inbox prefix (as `identity_options` connects everyone)."""
    options: dict[str, object] = {
        "user": user, "password": PASSWORDS[user], "allow_reconnect": False, "inbox_prefix": inbox_prefix(user),
    }  # fmt: skip
    if violations is not None:
        options["error_cb"] = violations.record
    return await nats.connect(server.url, **options)


@pytest.fixture
async def admin(secured_server: NatsServer) -> AsyncIterator[Bus]:
    """The operator's Bus: SWARM's streams and buckets, the services' consumers, each tenant's RUNS stream."""
    bus = await Bus.connect(settings_of(secured_server, ADMIN_USER), "admin")
    await bus.provision()
    for spec in (PLANS_CONSUMER, EXECUTED_CONSUMER):
        await bus.ensure_consumer(spec)
    for tenant in TENANTS:
        nc = await connect(secured_server, provision_user(tenant))
        await provision_tenant(nc, tenant)
        assert await provision_tenant(nc, tenant) is False  # idempotent: present the second time
        await nc.close()
    yield bus
    await bus.close()


async def follow(nc: NatsClient, tenant: str, run_id: str, name: str | None = None) -> Subscription:
    """What a tenant client does to watch its run: a consumer on its account's RUNS, filter in the API subject."""
    filter_subject = Subjects.run_all(tenant, run_id)
    config = ConsumerConfig(
        name=name or nc._nuid.next().decode(), filter_subject=filter_subject, deliver_subject=nc.new_inbox(),
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, max_deliver=1, flow_control=True,
        idle_heartbeat=5.0, mem_storage=True, num_replicas=1, inactive_threshold=5.0,
    )  # fmt: skip
    sub = await nc.subscribe(config.deliver_subject)
    # nats-py picks `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>` when the config has a name.
    await nc.jetstream(timeout=2)._jsm.add_consumer(RUNS.name, config)
    return sub


async def next_event(sub: Subscription) -> nats.aio.msg.Msg:
    """The next message with data (heartbeats and flow-control requests answered and skipped)."""
    while True:
        msg = await sub.next_msg(timeout=3)
        if msg.data:
            return msg
        if msg.reply:
            await msg.respond(b"")


def planned(tenant: str, run_id: str) -> RunPlanned:
    return RunPlanned.model_validate(
        {
            "run_id": run_id, "tenant": tenant, "goal": "Explain tides", "source": "template", "submitted_at": NOW,
            "plan": {"agents": [{"id": "a", "role": "r"}], "steps": [{"id": "s", "agent_id": "a", "instruction": "i"}]},
        }
    )  # fmt: skip


async def test_allowed_flow_tenant_submits_follows_and_cancels_through_its_account(
    secured_server: NatsServer, admin: Bus
) -> None:
    client = await connect(secured_server, tenant_user("acme"))
    planner = await Bus.connect(settings_of(secured_server, "planner"), "planner")
    try:
        task = TaskSubmission(run_id="acme-run-1", tenant="acme", goal="Explain tides")
        ack = await client.jetstream(timeout=2).publish(
            Subjects.task("acme"), task.model_dump_json().encode(), headers={"Nats-Msg-Id": task.run_id}
        )
        assert ack.stream == TASKS.name  # SWARM's TASKS acked it, across the account boundary
        sub = await follow(client, "acme", task.run_id)
        await planner.publish(Subjects.run_event("acme", task.run_id, "planned"), planned("acme", task.run_id))
        msg = await next_event(sub)  # sourced into acme's own RUNS, delivered from there
        assert msg.subject == Subjects.run_event("acme", task.run_id, "planned")
        assert RunPlanned.model_validate_json(msg.data).run_id == task.run_id
        cancel = Subjects.run_event("acme", task.run_id, "cancel")
        ack = await client.jetstream(timeout=2).publish(cancel, b"{}")
        assert ack.stream == RUNS.name
        assert (await admin.js.get_last_msg(RUNS.name, cancel)).subject == cancel  # in SWARM's RUNS
    finally:
        await client.close()
        await planner.close()


async def test_tenant_naming_a_service_consumer_is_harmless_and_the_swarm_api_denied(
    secured_server: NatsServer, admin: Bus
) -> None:
    """The reported stall: a tenant 'updating' the aggregator's / dispatcher's durable on RUNS."""
    violations = Violations()
    acme = await connect(secured_server, tenant_user("acme"), violations)
    before = {
        spec.durable: (await admin.js.consumer_info(RUNS.name, spec.durable)).config
        for spec in (PLANS_CONSUMER, EXECUTED_CONSUMER)
    }
    try:
        for spec in (PLANS_CONSUMER, EXECUTED_CONSUMER):
            # Harmless: accepted, but on acme's own RUNS (its account), not SWARM's.
            sub = await follow(acme, "acme", "x", name=spec.durable)
            await sub.unsubscribe()
            # Denied: SWARM's consumer API, imported only for the sourcing consumer.
            body = {"stream_name": RUNS.name, "config": {"name": spec.durable, "filter_subject": "swarm.run.acme.x.>"}}
            await acme.publish(
                f"$JS.SWARM.API.CONSUMER.CREATE.RUNS.{spec.durable}.swarm.run.acme.x.>",
                json.dumps(body).encode(), reply=acme.new_inbox(),
            )  # fmt: skip
            await violations.wait_for(f'publish to "$js.swarm.api.consumer.create.runs.{spec.durable}')
        for durable, config in before.items():
            after = (await admin.js.consumer_info(RUNS.name, durable)).config
            assert after.filter_subjects == config.filter_subjects and after.filter_subject == config.filter_subject
        # A restarting dispatcher and aggregator provision their consumers without a conflict.
        for spec, user in ((PLANS_CONSUMER, "dispatcher"), (EXECUTED_CONSUMER, "aggregator")):
            bus = await Bus.connect(settings_of(secured_server, user), user)
            try:
                await bus.ensure_consumer(spec)
            finally:
                await bus.close()
    finally:
        await acme.close()


async def test_tenant_consumers_are_limited_with_a_clear_error_and_others_go_on(
    secured_server: NatsServer, admin: Bus
) -> None:
    """Denied past its account's limit ('maximum consumers limit reached'); globex still follows its runs."""
    hog = await connect(secured_server, tenant_user("initech"))
    subs: list[Subscription] = []
    try:
        with pytest.raises(APIError) as refused:
            for n in range(LIMITS.max_consumers + 1):
                subs.append(await follow(hog, "initech", f"hog-{n}"))
        assert refused.value.err_code == 10026, refused.value
        assert "maximum consumers limit reached" in str(refused.value.description)
        assert len(subs) <= LIMITS.max_consumers
        # Another tenant's run goes on: globex follows it while initech sits at its limit.
        globex = await connect(secured_server, tenant_user("globex"))
        try:
            sub = await follow(globex, "globex", "g-run-1")
            await admin.publish(Subjects.run_event("globex", "g-run-1", "planned"), planned("globex", "g-run-1"))
            assert (await next_event(sub)).subject == Subjects.run_event("globex", "g-run-1", "planned")
        finally:
            await globex.close()
    finally:
        await hog.close()  # its consumers lose interest and expire (inactive_threshold)


async def test_tenant_push_consumer_into_the_gateway_queue_group_is_harmless(
    secured_server: NatsServer, admin: Bus
) -> None:
    """nats-server issue 8274: deliveries go to the tenant account's subject space, never to SWARM's gateway."""
    gateway = await connect(secured_server, "gateway")
    acme = await connect(secured_server, tenant_user("acme"))
    try:
        requests = await gateway.subscribe(Subjects.INFER, queue="gateway")
        await gateway.flush()
        await admin.publish(Subjects.run_event("acme", "lure", "planned"), planned("acme", "lure"))
        # Proof the events are there to deliver: acme's own follow receives them.
        assert (await next_event(await follow(acme, "acme", "lure"))).subject.endswith(".planned")
        config = ConsumerConfig(
            name="lure", filter_subject=Subjects.run_all("acme", "lure"), deliver_subject=Subjects.INFER,
            deliver_group="gateway", ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
        )  # fmt: skip
        await acme.jetstream(timeout=2)._jsm.add_consumer(RUNS.name, config)  # accepted: its own stream
        await acme.flush()
        await admin.nc.publish(Subjects.INFER, b"control")
        first = await requests.next_msg(timeout=3)
        assert first.data == b"control"  # nothing of acme's reached the gateway before the control message
    finally:
        await gateway.close()
        await acme.close()


async def test_services_cannot_read_each_others_replies(secured_server: NatsServer, admin: Bus) -> None:
    """Denied: every user subscribes to its own inbox prefix only; services still work on theirs."""
    violations = Violations()
    worker = await connect(secured_server, "worker", violations)
    dispatcher = await Bus.connect(settings_of(secured_server, "dispatcher"), "dispatcher")
    try:
        for other in ("_INBOX.>", f"{inbox_prefix('dispatcher')}.>", f"{inbox_prefix(ADMIN_USER)}.>"):
            await worker.subscribe(other)
            await violations.wait_for(f'subscription to "{other.lower()}"')
        # The dispatcher's own KV replies reach it on `_INBOX_dispatcher`.
        await (await dispatcher.kv(RUN_STATE_BUCKET)).put("r1", b"{}")
        assert (await (await dispatcher.kv(RUN_STATE_BUCKET)).get("r1")).value == b"{}"
    finally:
        await worker.close()
        await dispatcher.close()


async def test_worker_cannot_purge_or_delete_stores_buckets_or_streams(
    secured_server: NatsServer, admin: Bus
) -> None:
    """Denied: STREAM.PURGE / STREAM.DELETE of any store, bucket or stream; a worker writes objects without."""
    worker_bus = await Bus.connect(settings_of(secured_server, "worker"), "worker")
    payloads = Payloads(worker_bus, inline_limit=16)
    await payloads.put("globex.run-9.s1", b"x" * 100)  # another tenant's large output, by reference
    await payloads.put("globex.run-9.s1", b"y" * 100)  # replaced (a retried step) with no purge right
    violations = Violations()
    worker = await connect(secured_server, "worker", violations)
    try:
        for subject in (
            f"$JS.API.STREAM.PURGE.OBJ_{PAYLOADS_STORE.name}",
            f"$JS.API.STREAM.DELETE.OBJ_{PAYLOADS_STORE.name}",
            f"$JS.API.STREAM.PURGE.KV_{OUTPUTS_BUCKET.name}",
            f"$JS.API.STREAM.DELETE.KV_{OUTPUTS_BUCKET.name}",
            f"$JS.API.STREAM.PURGE.{RUNS.name}",
            f"$JS.API.STREAM.DELETE.{TASKS.name}",
            f"$JS.API.STREAM.UPDATE.{RUNS.name}",
        ):
            await worker.publish(subject, b"{}", reply=worker.new_inbox())
            await violations.wait_for(f'publish to "{subject.lower()}"')
        assert await Payloads(admin, inline_limit=16).get("globex.run-9.s1") == b"y" * 100
    finally:
        await worker.close()
        await worker_bus.close()


async def test_tenant_cannot_list_read_purge_or_overwrite_another_tenants_data(
    secured_server: NatsServer, admin: Bus
) -> None:
    """Denied: globex's KV entries, objects and run events are out of acme's reach, however it asks."""
    globex_run = "globex-run-1"
    await admin.publish(Subjects.run_event("globex", globex_run, "planned"), planned("globex", globex_run))
    await Payloads(admin, inline_limit=16).put(f"{globex_run}.s1", b"secret" * 10)
    violations = Violations()
    acme = await connect(secured_server, tenant_user("acme"), violations)
    try:
        # Run events: a core subscription, the SWARM API, and a consumer on its own RUNS.
        await acme.subscribe(Subjects.run_all("globex", globex_run))
        await violations.wait_for(f'subscription to "{Subjects.run_all("globex", globex_run).lower()}"')
        with pytest.raises(nats.errors.TimeoutError):
            await follow(acme, "globex", globex_run)
        await violations.wait_for("$js.api.consumer.create.runs.")
        body = {"stream_name": RUNS.name, "config": ConsumerConfig(
            name="sneaky", filter_subject=Subjects.run_all("globex", globex_run), deliver_subject=acme.new_inbox(),
        ).as_dict()}  # fmt: skip
        reply = await acme.request(
            f"$JS.API.CONSUMER.CREATE.RUNS.sneaky.{Subjects.run_all('acme', 'x')}", json.dumps(body).encode(), timeout=2
        )
        assert json.loads(reply.data)["error"]["err_code"] == 10131  # body filter does not match the subject
        # KV entries and objects: list, read, overwrite, purge.
        for subject in (
            "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", f"$JS.API.STREAM.INFO.KV_{OUTPUTS_BUCKET.name}",
            f"$JS.API.DIRECT.GET.KV_{OUTPUTS_BUCKET.name}.$KV.{OUTPUTS_BUCKET.name}.{globex_run}.s1",
            f"$JS.API.CONSUMER.CREATE.OBJ_{PAYLOADS_STORE.name}", f"$KV.{OUTPUTS_BUCKET.name}.{globex_run}.s1",
            f"$O.{PAYLOADS_STORE.name}.M.x", f"$JS.API.STREAM.PURGE.OBJ_{PAYLOADS_STORE.name}",
            f"$JS.API.STREAM.PURGE.{RUNS.name}", f"$JS.API.STREAM.DELETE.{RUNS.name}",
            f"$JS.API.STREAM.INFO.{RUNS.name}", "_INBOX.x", Subjects.task("globex"),
        ):  # fmt: skip
            await acme.publish(subject, b"{}", reply=acme.new_inbox())
            await violations.wait_for(f'publish to "{subject.lower()}"')
        await acme.subscribe("_INBOX.>")
        await violations.wait_for('subscription to "_inbox.>"')
        # Nothing of globex's changed, and acme's own RUNS holds only acme's events.
        assert await Payloads(admin, inline_limit=16).get(f"{globex_run}.s1") == b"secret" * 10
        provisioner = await connect(secured_server, provision_user("acme"))
        try:
            info = await provisioner.jetstream(timeout=2).stream_info(RUNS.name, subjects_filter=">")
            assert info.state.subjects and all(s.startswith("swarm.run.acme.") for s in info.state.subjects)
        finally:
            await provisioner.close()
    finally:
        await acme.close()


async def test_worker_cannot_submit_tasks_or_write_run_state(secured_server: NatsServer, admin: Bus) -> None:
    violations = Violations()
    worker = await connect(secured_server, "worker", violations)
    try:
        before = (await admin.js.stream_info(TASKS.name)).state.messages
        await worker.publish(Subjects.task("default"), b'{"run_id": "forged", "goal": "x"}')
        await violations.wait_for(f'publish to "{Subjects.task("default")}"')
        assert (await admin.js.stream_info(TASKS.name)).state.messages == before
        kv = await worker.jetstream(timeout=0.5).key_value(RUN_STATE_BUCKET.name)  # it may look the bucket up
        with pytest.raises(nats.errors.TimeoutError):
            await kv.put("forged-run", b"{}")
        await violations.wait_for(f"$kv.{RUN_STATE_BUCKET.name}.forged-run")
        with pytest.raises(KeyNotFoundError):
            await (await admin.kv(RUN_STATE_BUCKET)).get("forged-run")
    finally:
        await worker.close()


async def test_only_the_recorder_writes_the_run_index(secured_server: NatsServer, admin: Bus) -> None:
    """Denied: a put into the run index by any service but the recorder, its one writer (derived from RUNS)."""
    index = await admin.kv(RUN_INDEX_BUCKET)
    for user in ("planner", "dispatcher", "aggregator", "worker", "gateway"):
        violations = Violations()
        nc = await connect(secured_server, user, violations)
        try:
            await nc.publish(f"$KV.{RUN_INDEX_BUCKET.name}.forged-{user}", b"{}", reply=nc.new_inbox())
            await violations.wait_for(f'publish to "$kv.{RUN_INDEX_BUCKET.name}.forged-{user}"')
        finally:
            await nc.close()
        with pytest.raises(KeyNotFoundError):
            await index.get(f"forged-{user}")
    recorder = await connect(secured_server, "recorder")
    try:
        kv = await recorder.jetstream(timeout=2).key_value(RUN_INDEX_BUCKET.name)
        await kv.put("written-by-the-recorder", b"{}")
    finally:
        await recorder.close()
    assert (await index.get("written-by-the-recorder")).value == b"{}"


async def test_passwords_are_bcrypt_hashes_and_checked(secured_server: NatsServer) -> None:
    config = render_nats_auth(PASSWORDS, TENANTS)
    assert all(password not in config for password in PASSWORDS.values())
    assert config.count('"$2b$') == len(PASSWORDS)
    with pytest.raises(nats.errors.Error):
        await nats.connect(
            secured_server.url, user="worker", password="wrong", allow_reconnect=False, max_reconnect_attempts=0
        )
    nc = await connect(secured_server, "worker")
    await nc.close()


async def test_tenant_follows_a_long_run_through_flow_control(secured_server: NatsServer, admin: Bus) -> None:
    """Allowed: thousands of events reach the tenant's consumer; its flow-control replies (which also cross
    the `$JS.FC.RUNS.>` import into SWARM, harmlessly) keep its own consumer going."""
    run_id, count = "acme-long", 3000
    body = b"x" * 4096
    for n in range(count):
        await admin.nc.publish(Subjects.run_event("acme", run_id, f"progress{n}"), body)
    await admin.nc.flush()
    acme = await connect(secured_server, tenant_user("acme"))
    try:
        sub = await follow(acme, "acme", run_id)
        received = 0
        while received < count:
            await next_event(sub)
            received += 1
        assert received == count
    finally:
        await acme.close()


async def test_worker_cannot_wipe_a_bucket_with_a_rollup_header(secured_server: NatsServer, admin: Bus) -> None:
    """Denied: a put carrying `Nats-Rollup: all` would purge the whole bucket; KV buckets refuse roll-ups."""
    outputs = await admin.kv(OUTPUTS_BUCKET)
    await outputs.put("globex.run-7.s1", b"globex's output")
    worker = await connect(secured_server, "worker")
    try:
        with pytest.raises(APIError, match="rollup"):
            await worker.jetstream(timeout=2).publish(
                f"$KV.{OUTPUTS_BUCKET.name}.acme.x", b"", headers={"Nats-Rollup": "all"}
            )
    finally:
        await worker.close()
    assert (await outputs.get("globex.run-7.s1")).value == b"globex's output"
    await outputs.delete("globex.run-7.s1")  # deletes are markers, no roll-up: they still work
