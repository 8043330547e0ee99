"""Workers hold only what a step needs: a worker pool dedicated to tenants, enforced by a real nats-server.

With `SWARM_SECURITY_POOLS=default,acmepool:acme`, acme's steps run on `acmepool`, whose workers connect as
`worker-acmepool`: they may touch acme's keys (`acme.>`) in the outputs, scratchpad and memory buckets and
acme's own payloads store, and nothing of another tenant's. Each test says whether an attempt is **denied**
(a permission violation) or **harmless** (accepted, and nothing of another tenant changed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig
from nats.js.errors import KeyNotFoundError

from services.worker_pool.execution import StepExecutor
from services.worker_pool.settings import WorkerSettings
from services.worker_pool.tools import ToolContext, ToolRegistry
from swarm.bus import Bus
from swarm.contracts import (
    DEFAULT_POOL,
    MEMORY_BUCKET,
    OUTPUTS_BUCKET,
    PAYLOADS_STORE,
    RUN_STATE_BUCKET,
    SCRATCHPAD_BUCKET,
    Keys,
    Subjects,
    tenant_payloads_store,
)
from swarm.ops.natsserver import NatsServer
from swarm.ops.security import (
    ADMIN_USER,
    SYSTEM_USER,
    inbox_prefix,
    pool_user,
    render_nats_auth,
    user_permissions,
)
from swarm.payloads import PayloadMissing, Payloads, is_ref
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex")
POOLS = (DEFAULT_POOL, "acmepool:acme")
WORKER = pool_user("acmepool")
PASSWORDS = {user: f"pw-{user}" for user in [*user_permissions(TENANTS, POOLS), SYSTEM_USER]}
ACME_STORE, GLOBEX_STORE = tenant_payloads_store("acme"), tenant_payloads_store("globex")
BIG = b"globex's secret " * 8  # over the test's inline limit: stored by reference
# globex's data, each in a bucket a worker holds (globex is served by the shared pool: one payloads store).
GLOBEX_KEYS = {
    OUTPUTS_BUCKET: Keys.output("globex", "g1", "s1"),
    SCRATCHPAD_BUCKET: Keys.scratchpad("globex", "g1", "plan"),
    MEMORY_BUCKET: Keys.memory_turn("globex", "g1", "a", "s1", 1),
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server with the generated accounts and users, pools as above (its own per test: its log is the test's)."""
    config = tmp_path / "auth.conf"
    config.write_text(render_nats_auth(PASSWORDS, TENANTS, POOLS, hashed=False))
    started = NatsServer(store_dir=tmp_path / "store", log_file=tmp_path / "nats.log", extra_args=("-c", str(config))).start()
    yield started
    started.stop()


def settings_of(server: NatsServer, user: str) -> NatsSettings:
    return NatsSettings(url=server.url, user=user, password=PASSWORDS[user], request_timeout_s=0.5)


def violations(server: NatsServer) -> list[str]:
    assert server.log_file is not None
    return [line for line in server.log_file.read_text().splitlines() if "Violation" in line]


async def wait_for_violation(server: NatsServer, subject: str) -> None:
    for _ in range(60):
        if any(f'"{subject}"' in line for line in violations(server)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no violation for {subject}: {violations(server)}")


@pytest.fixture
async def admin(server: NatsServer) -> AsyncIterator[Bus]:
    """Streams, buckets, acme's payloads store, and globex's data in every bucket a worker holds."""
    bus = await Bus.connect(settings_of(server, ADMIN_USER), "admin")
    await bus.provision()
    await bus.provision((), (ACME_STORE,))
    for bucket, key in GLOBEX_KEYS.items():
        await Payloads(bus, inline_limit=16, bucket=bucket).put(key, BIG)
    yield bus
    await bus.close()


@pytest.fixture
async def worker(server: NatsServer, admin: Bus) -> AsyncIterator[Bus]:
    bus = await Bus.connect(settings_of(server, WORKER), "worker")
    yield bus
    await bus.close()


async def raw(server: NatsServer, user: str) -> NatsClient:
    return await nats.connect(
        server.url, user=user, password=PASSWORDS[user], inbox_prefix=inbox_prefix(user), allow_reconnect=False
    )


async def test_allowed_a_dedicated_pools_worker_does_its_tenants_work(server: NatsServer, worker: Bus) -> None:
    """Outputs (a large one into acme's own store), memory, every scratchpad operation, and the aggregator
    reads the large output: all without a single violation (the grants are sufficient)."""
    executor = StepExecutor(worker, WorkerSettings(tenants=("acme",), inline_payload_bytes=1024))
    output, big = Keys.output("acme", "a1", "s1"), b"acme's answer " * 200
    assert await executor.payloads("acme").put(output, big) is True  # by reference
    marker = (await (await worker.kv(OUTPUTS_BUCKET)).get(output)).value or b""
    assert is_ref(marker) and f"obj://{ACME_STORE.name}/".encode() in marker
    assert await executor.payloads("acme").get(output) == big
    turn = Keys.memory_turn("acme", "a1", "a", "s1", 1)
    await executor.payloads("acme", MEMORY_BUCKET).put(turn, b"remembered")
    assert await executor.payloads("acme", MEMORY_BUCKET).get(turn) == b"remembered"
    pad = ToolRegistry.for_worker(executor.settings).get("scratchpad")
    ctx = ToolContext(run_id="a1", tenant="acme", step_id="s1", agent_id="a", attempt=1, settings=executor.settings, bus=worker)
    await pad.call({"op": "put", "key": "plan", "value": "v1"}, ctx)
    await pad.call({"op": "append", "key": "log", "value": "x"}, ctx)
    assert await pad.call({"op": "get", "key": "plan"}, ctx) == {"key": "plan", "value": "v1"}
    assert await pad.call({"op": "keys"}, ctx) == {"keys": ["log", "plan"]}
    with pytest.raises(KeyNotFoundError):  # a run's checkpoint, by its run id (a run's end is confirmed so)
        await (await worker.kv(RUN_STATE_BUCKET)).get(Keys.run_checkpoint("a1"))
    aggregator = await Bus.connect(settings_of(server, "aggregator"), "aggregator")
    try:
        assert await Payloads(aggregator).resolve(marker) == big  # a dedicated tenant's store: it may read it
    finally:
        await aggregator.close()
    await asyncio.sleep(0.2)
    assert violations(server) == []


async def test_denied_a_dedicated_pools_worker_cannot_read_or_list_another_tenants_data(
    server: NatsServer, worker: Bus
) -> None:
    for bucket, key in GLOBEX_KEYS.items():
        kv = await worker.kv(bucket)  # it may look the bucket up (its configuration, no data)
        with pytest.raises((TimeoutError, nats.errors.TimeoutError)):
            await kv.get(key)
        await wait_for_violation(server, f"$JS.API.DIRECT.GET.KV_{bucket.name}.$KV.{bucket.name}.{key}")
        with pytest.raises((TimeoutError, nats.errors.TimeoutError)):
            await kv.keys()  # an unnamed consumer: its filter would travel in the body
        await wait_for_violation(server, f"$JS.API.CONSUMER.CREATE.KV_{bucket.name}")
        with pytest.raises((TimeoutError, nats.errors.TimeoutError)):  # named, filtered to globex's keys
            await worker.js.subscribe(
                f"$KV.{bucket.name}.globex.>", stream=f"KV_{bucket.name}", config=ConsumerConfig(name="peek")
            )
        await wait_for_violation(server, f"$JS.API.CONSUMER.CREATE.KV_{bucket.name}.peek.$KV.{bucket.name}.globex.>")
    # The shared payloads store, where globex's large values are: not even one object's meta.
    objects = await worker.js.object_store(PAYLOADS_STORE.name)
    with pytest.raises((TimeoutError, nats.errors.TimeoutError)):
        await objects.get("anything")
    await wait_for_violation(server, f"$JS.API.STREAM.MSG.GET.OBJ_{PAYLOADS_STORE.name}")  # the object's meta


async def test_denied_a_dedicated_pools_worker_cannot_overwrite_purge_or_delete_another_tenants_data(
    server: NatsServer, admin: Bus
) -> None:
    nc = await raw(server, WORKER)
    try:
        subjects = [f"$KV.{bucket.name}.{key}" for bucket, key in GLOBEX_KEYS.items()]
        subjects += [
            f"$O.{PAYLOADS_STORE.name}.M.eA==",  # an object's meta in the shared store (with a roll-up: a wipe)
            f"$O.{PAYLOADS_STORE.name}.C.x",
            # No purge or delete, not even of its own tenant's store or of a whole bucket.
            f"$JS.API.STREAM.PURGE.OBJ_{ACME_STORE.name}",
            f"$JS.API.STREAM.DELETE.OBJ_{ACME_STORE.name}",
            f"$JS.API.STREAM.PURGE.OBJ_{PAYLOADS_STORE.name}",
            *(f"$JS.API.STREAM.PURGE.KV_{bucket.name}" for bucket in GLOBEX_KEYS),
            *(f"$JS.API.STREAM.DELETE.KV_{bucket.name}" for bucket in GLOBEX_KEYS),
            f"$JS.API.STREAM.CREATE.OBJ_{GLOBEX_STORE.name}",  # nor another tenant's store
            # Nor a result or step events of another tenant's run: those subjects name the tenant.
            Subjects.result("globex", "run-g"),
            Subjects.step_event("globex", "run-g"),
            Subjects.step_event_batch("globex", "run-g"),
        ]
        for subject in subjects:
            await nc.publish(subject, b"overwritten", headers={"Nats-Rollup": "all"}, reply=nc.new_inbox())
            await wait_for_violation(server, subject)
    finally:
        await nc.close()
    for bucket, key in GLOBEX_KEYS.items():  # all of globex's data as it was
        assert await Payloads(admin, inline_limit=16, bucket=bucket).get(key) == BIG


async def test_harmless_a_roll_up_in_its_own_tenants_store_reaches_no_other_tenant(
    server: NatsServer, worker: Bus, admin: Bus
) -> None:
    """Object stores need roll-ups (an object's meta is written with one), and a stream cannot allow them for
    one subject only: the server honours `Nats-Rollup: all` and wipes the store. A dedicated pool's store
    holds its own tenants' payloads alone, so that is the worst it can do; globex's data stays."""
    acme = Payloads(worker, inline_limit=16, store=ACME_STORE)
    await acme.put(Keys.output("acme", "a1", "s1"), b"acme's own " * 10)
    ack = await worker.js.publish(f"$O.{ACME_STORE.name}.M.eA==", b"{}", headers={"Nats-Rollup": "all"})
    assert ack.stream == f"OBJ_{ACME_STORE.name}"  # accepted: the server honours the roll-up ...
    info = await admin.js.stream_info(f"OBJ_{ACME_STORE.name}")
    assert info.state.messages == 1  # ... and only the roll-up message is left of acme's store
    with pytest.raises(PayloadMissing):
        await acme.get(Keys.output("acme", "a1", "s1"))
    for bucket, key in GLOBEX_KEYS.items():
        assert await Payloads(admin, inline_limit=16, bucket=bucket).get(key) == BIG
    assert violations(server) == []
