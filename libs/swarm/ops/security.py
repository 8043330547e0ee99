"""Access control derived from the contracts: NATS accounts and users with least-privilege permissions.

Accounts are NATS's isolation boundary, so tenants and services live in different ones:

- `SWARM` (JetStream enabled) holds the streams, buckets and every service: a user per service (planner,
  dispatcher, worker, aggregator, gateway, recorder), allowed exactly the subjects, streams, consumers and
  buckets that service uses (see `service_permissions`), each replying on its own inbox prefix
  (`_INBOX_<service>`); `admin` (operators, the CLI's `swarm runs`) may do everything in it;
- `TENANT_<tenant>`, one per tenant, with JetStream limits of its own (streams, consumers, storage): the
  tenant's client user `tenant-<tenant>`, and `provision-<tenant>`, which creates the one stream of the
  account. SWARM exports to that account only its own subjects: submitting (`swarm.tasks.<tenant>`) and
  cancelling (`swarm.run.<tenant>.*.cancel`) as services, and the tenant's run events through the
  account's own `RUNS` stream, sourced from SWARM's RUNS filtered to `swarm.run.<tenant>.*.>` (the sourcing
  consumer's API, flow-control and delivery subjects are the only other exports). A tenant creates
  consumers only on that stream: whatever it names them, it cannot reach a service's consumer, another
  tenant's events, a service's queue group or a bucket;
- `sys` in the system account (server monitoring).

Passwords come from the environment (`SWARM_SECURITY_<USER>_PASSWORD`, tenants in
`SWARM_SECURITY_TENANTS`), or are generated; the config holds only their bcrypt hashes, which
nats-server checks natively (`pip install bcrypt`). Usage:

    python -m swarm.ops.security nats-config --out auth.conf [--secrets-out secrets.env]
    python -m swarm.ops.security provision-tenants   # each tenant account's RUNS stream (after the servers start)
    python -m swarm.ops.security matrix          # the permission matrix, as Markdown
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import ExternalStream, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.errors import NotFoundError
from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from swarm.bus import inbox_prefix, tls_options
from swarm.contracts import (
    AGGREGATOR_CONSUMER,
    ALL_BUCKETS,
    ALL_STREAMS,
    DEFAULT_POOL,
    DEFAULT_TENANT,
    DISPATCHER_LEASES_BUCKET,
    DISPATCHER_PLANS_CONSUMER,
    DISPATCHER_RESULTS_CONSUMER,
    EVENTS,
    GATEWAY_QUEUE_GROUP,
    MEMORY_BUCKET,
    OUTPUTS_BUCKET,
    PAYLOADS_STORE,
    PLANNER_CONSUMER,
    PLANS_STORE,
    RECORDER_CONSUMER,
    RECORDER_RUNS_CONSUMER,
    RESULT_PARTITIONS,
    RESULTS,
    RUN_INDEX_BUCKET,
    RUN_INDEX_CONSUMER,
    RUN_STATE_BUCKET,
    RUNS,
    SCRATCHPAD_BUCKET,
    STEPS,
    TASKS,
    TENANT_KEYED_BUCKETS,
    WORKERS_CONSUMER_PREFIX,
    BucketSpec,
    Keys,
    RunEventKind,
    StreamSpec,
    Subjects,
    is_valid_id,
    tenant_payloads_store,
)
from swarm.settings import PLACEHOLDER_PREFIX, NatsSettings, refuse_placeholder

ACCOUNT = "SWARM"
SYSTEM_ACCOUNT = "SYS"
TENANT_ACCOUNT_PREFIX = "TENANT_"
ADMIN_USER = "admin"
SYSTEM_USER = "sys"
SERVICE_USERS = ("planner", "dispatcher", "worker", "aggregator", "gateway", "recorder")
TENANT_USER_PREFIX = "tenant-"
PROVISION_USER_PREFIX = "provision-"
# The key of the provisioning users' one password (SWARM_SECURITY_PROVISION_PASSWORD).
PROVISION = "provision"
JS_API = "$JS.API"
# In a tenant account: the prefix under which SWARM's consumer-create API of RUNS is imported, for the
# sourcing consumer of the tenant's own RUNS stream alone (no tenant user may publish to it).
SWARM_JS_API = "$JS.SWARM.API"
BCRYPT_COST = 11


WORKER_USER_PREFIX = "worker-"
# In SWARM_SECURITY_POOLS: `pool` (shared: every tenant) or `pool:tenant+tenant` (dedicated to those tenants).
POOL_TENANTS_SEPARATOR = "+"


def pool_user(pool: str) -> str:
    """The NATS user of a dedicated worker pool's workers (a shared pool's workers are `worker`)."""
    return f"{WORKER_USER_PREFIX}{pool}"


def parse_pools(pools: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Pool -> the tenants it is dedicated to (empty: a shared pool, serving every tenant)."""
    parsed: dict[str, tuple[str, ...]] = {}
    for entry in pools:
        pool, dedicated, tenants = entry.partition(":")
        served = tuple(t for t in tenants.split(POOL_TENANTS_SEPARATOR) if t)
        for name in (pool, *served):
            if not is_valid_id(name):
                raise ValueError(f"invalid pool or tenant id {name!r} in pool entry {entry!r}")
        if pool in parsed or (dedicated and not served):
            raise ValueError(f"pool entry {entry!r}: a pool is named once, with tenants after ':' if dedicated")
        parsed[pool] = served
    return parsed


def tenant_user(tenant: str) -> str:
    """The NATS user of a tenant's clients."""
    return f"{TENANT_USER_PREFIX}{tenant}"


def provision_user(tenant: str) -> str:
    """The NATS user that creates the tenant account's RUNS stream (operators, `provision-tenants`)."""
    return f"{PROVISION_USER_PREFIX}{tenant}"


def tenant_account(tenant: str) -> str:
    """The NATS account of one tenant."""
    return f"{TENANT_ACCOUNT_PREFIX}{tenant}"


@dataclass(frozen=True)
class Permissions:
    """What one NATS user may publish and subscribe to; `responses`: may answer requests it receives."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = False

    def as_config(self) -> dict[str, object]:
        """The `permissions` block of a nats-server user."""
        block: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.responses:
            # Replies to requests it received (health probes, inference streams, queries): any number of
            # messages per request (a stream of chunks), for as long as a request may run.
            block["allow_responses"] = {"max": -1, "expires": "1h"}
        return block


@dataclass
class Grants:
    """Accumulates subjects; the building blocks below say which JetStream API calls an operation makes."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    responses: bool = False

    def pub(self, *subjects: str) -> Grants:
        self.publish.extend(s for s in subjects if s not in self.publish)
        return self

    def sub(self, *subjects: str) -> Grants:
        self.subscribe.extend(s for s in subjects if s not in self.subscribe)
        return self

    def provision(self, streams: Iterable[StreamSpec], buckets: Iterable[BucketSpec]) -> Grants:
        """`Bus.provision`: stream info, and create what is missing (create never alters an existing stream)."""
        names = [s.name for s in streams] + [b.stream for b in buckets]
        for name in names:
            self.pub(f"{JS_API}.STREAM.INFO.{name}", f"{JS_API}.STREAM.CREATE.{name}")
        return self

    def durable(self, stream: StreamSpec, durable: str) -> Grants:
        """`Bus.ensure_consumer` + pull fetches + acks of one durable consumer, and nothing of any other."""
        return self.pub(
            f"{JS_API}.CONSUMER.INFO.{stream.name}.{durable}",
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream.name}.{durable}",
            f"{JS_API}.CONSUMER.CREATE.{stream.name}.{durable}",
            f"{JS_API}.CONSUMER.CREATE.{stream.name}.{durable}.>",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream.name}.{durable}",
            f"$JS.ACK.{stream.name}.{durable}.>",
        )

    def read_stream(self, stream: StreamSpec) -> Grants:
        """Direct reads of single messages (`get_last_msg`)."""
        return self.pub(
            f"{JS_API}.STREAM.MSG.GET.{stream.name}",
            f"{JS_API}.DIRECT.GET.{stream.name}",
            f"{JS_API}.DIRECT.GET.{stream.name}.>",
        )

    def kv_read(self, bucket: BucketSpec) -> Grants:
        """get, keys and watch (an ordered consumer on the bucket's stream)."""
        name = bucket.stream
        return self.pub(
            f"{JS_API}.STREAM.INFO.{name}",
            f"{JS_API}.STREAM.MSG.GET.{name}",
            f"{JS_API}.DIRECT.GET.{name}",
            f"{JS_API}.DIRECT.GET.{name}.>",
            f"{JS_API}.CONSUMER.CREATE.{name}",
            f"{JS_API}.CONSUMER.CREATE.{name}.>",
            f"{JS_API}.CONSUMER.INFO.{name}.*",
            f"{JS_API}.CONSUMER.DELETE.{name}.*",
        )

    def kv_write(self, bucket: BucketSpec) -> Grants:
        """put, create, update and delete (all of them publishes to `$KV.<bucket>.<key>`)."""
        return self.kv_read(bucket).pub(bucket.subjects)

    def objects_read(self, store: BucketSpec) -> Grants:
        """Object get: the meta message, then an ordered consumer on the object's chunks (found by stream name lookup)."""
        return self.kv_read(store).pub(f"{JS_API}.STREAM.NAMES")

    def objects_write(self, store: BucketSpec) -> Grants:
        """Object put: chunks and meta. Never `STREAM.PURGE`: its filter travels in the body, so a grant to
        purge one object's chunks is a grant to purge the whole store; objects are written once instead."""
        return self.objects_read(store).pub(store.subjects)

    def answer_requests(self) -> Grants:
        """Publish replies to the requests it receives (whatever their reply subject)."""
        self.responses = True
        return self

    def kv_tenant(self, bucket: BucketSpec, tenant: str) -> Grants:
        """get, put, create, update, delete and filtered listing of one tenant's keys (`Keys.of_tenant`), and
        nothing of any other tenant's: every grant names the tenant's key prefix in its subject.

        Reads are direct gets in the subject form (`DIRECT.GET.<stream>.<subject>`, what nats-py's `kv.get`
        sends); listings are consumers named in the create subject with their filter there too (the server
        checks the body against it); an unnamed consumer's filter travels in the body, so it is never granted.
        """
        name, keys = bucket.stream, bucket.key_subject(Keys.of_tenant(tenant))
        return self.pub(
            keys,
            f"{JS_API}.STREAM.INFO.{name}",  # `js.key_value`: the bucket's configuration, no data
            f"{JS_API}.DIRECT.GET.{name}.{keys}",
            f"{JS_API}.CONSUMER.CREATE.{name}.*.{keys}",
            f"{JS_API}.CONSUMER.INFO.{name}.*",
        )

    def health(self, service: str) -> Grants:
        """Answer (and send, for the container health check) `swarm.health.<service>`."""
        return self.answer_requests().pub(Subjects.health(service)).sub(Subjects.health(service))

    def build(self) -> Permissions:
        return Permissions(tuple(self.publish), tuple(self.subscribe), self.responses)



def _service(name: str) -> Grants:
    """What every service does: JetStream replies on its own inbox, provisioning, its health probe."""
    return Grants().sub(f"{inbox_prefix(name)}.>").provision(ALL_STREAMS, ALL_BUCKETS).health(name)


PLANNER_RUN_EVENTS = (RunEventKind.ACCEPTED, RunEventKind.PLANNED, RunEventKind.REJECTED)


def _dedicated_worker(pool: str, tenants: Sequence[str]) -> Grants:
    """A dedicated pool's workers: its steps, and the keys and payload stores of its tenants only.

    Results and step events are published under its tenants' subjects only (the dispatcher and the recorder
    check that a subject's tenant is the run's). What it still shares with every worker: inference requests
    (their subject carries no tenant), and reading a run's checkpoint by its run id (RUN_STATE_BUCKET keys are
    run ids; it cannot list them).
    """
    stores = [tenant_payloads_store(tenant) for tenant in tenants]
    worker = (
        Grants().sub(f"{inbox_prefix(pool_user(pool))}.>").provision(ALL_STREAMS, (*ALL_BUCKETS, *stores))
        .health("worker").durable(STEPS, f"{WORKERS_CONSUMER_PREFIX}-{pool}")
        .pub(Subjects.INFER, Subjects.INFER_CANCEL)
    )  # fmt: skip
    for tenant in tenants:
        worker.pub(Subjects.tenant_results(tenant), Subjects.step_event(tenant, "*"), Subjects.step_event_batch(tenant, "*"))
        worker.sub(*(Subjects.run_event(tenant, "*", kind) for kind in (RunEventKind.CANCELLED, RunEventKind.FAILED)))
        for bucket in TENANT_KEYED_BUCKETS:
            worker.kv_tenant(bucket, tenant)
        # Its tenant's store alone: there, even a roll-up that wipes the store reaches no other tenant.
        worker.objects_write(tenant_payloads_store(tenant))
    run_state = RUN_STATE_BUCKET.stream
    # One token: a checkpoint (`Keys.run_checkpoint`), never a running marker (`running.p<n>.<run>`).
    return worker.pub(
        f"{JS_API}.STREAM.INFO.{run_state}", f"{JS_API}.DIRECT.GET.{run_state}.{RUN_STATE_BUCKET.key_subject('*')}"
    )


def service_permissions(pools: Sequence[str] = (DEFAULT_POOL,)) -> dict[str, Permissions]:
    """Per service user: exactly what the service's code publishes, consumes and reads (see each service).

    `pools` as in `parse_pools`: the shared pools' workers are the user `worker`, which may touch every
    tenant's outputs, scratchpad, memory and payloads (the trust boundary of a shared pool); each dedicated
    pool's workers are `worker-<pool>`, which may touch only its tenants' (`_dedicated_worker`).
    """
    served = parse_pools(pools)
    shared = [pool for pool, tenants in served.items() if not tenants]
    dedicated = {pool: tenants for pool, tenants in served.items() if tenants}
    dedicated_stores = [tenant_payloads_store(t) for tenants in dedicated.values() for t in tenants]
    planner = (
        _service("planner")
        .durable(TASKS, PLANNER_CONSUMER)
        .pub(*(Subjects.run_kind_all(kind) for kind in PLANNER_RUN_EVENTS), Subjects.INFER, Subjects.INFER_CANCEL)
        .kv_read(RUN_INDEX_BUCKET)  # is a task a repeat? (the recorder writes the index)
        .objects_write(PLANS_STORE)  # plans by reference: read the client's, store the planned run's
    )
    dispatcher = _service("dispatcher").durable(RUNS, DISPATCHER_PLANS_CONSUMER).read_stream(RUNS)
    for partition in range(RESULT_PARTITIONS):
        dispatcher.durable(RESULTS, f"{DISPATCHER_RESULTS_CONSUMER}-{partition}")
    dispatcher.pub(
        *(Subjects.steps(pool) for pool in served),
        Subjects.step_event("*", "*"), Subjects.step_event_batch("*", "*"),
        *(Subjects.run_kind_all(kind) for kind in (RunEventKind.PROGRESS, RunEventKind.EXECUTED, RunEventKind.FAILED, RunEventKind.CANCELLED)),
    ).kv_write(RUN_STATE_BUCKET).kv_write(DISPATCHER_LEASES_BUCKET).objects_read(
        PLANS_STORE
    )  # fmt: skip
    worker = _service("worker")
    for pool in shared:
        worker.durable(STEPS, f"{WORKERS_CONSUMER_PREFIX}-{pool}")
    if shared:  # else `worker` runs no pool: it holds no tenant's data
        worker.pub(
            Subjects.RESULTS_ALL, Subjects.step_event("*", "*"), Subjects.step_event_batch("*", "*"), Subjects.INFER,
            Subjects.INFER_CANCEL,
        ).sub(
            # Core subscriptions (no JetStream) to skip queued steps of runs that ended meanwhile.
            Subjects.run_kind_all(RunEventKind.CANCELLED), Subjects.run_kind_all(RunEventKind.FAILED),
        ).kv_write(OUTPUTS_BUCKET).objects_write(PAYLOADS_STORE).kv_write(SCRATCHPAD_BUCKET).kv_write(MEMORY_BUCKET).kv_read(
            RUN_STATE_BUCKET  # a run's end is believed when its checkpoint confirms it
        )  # fmt: skip
    aggregator = (
        _service("aggregator")
        .durable(RUNS, AGGREGATOR_CONSUMER)
        .pub(Subjects.run_kind_all(RunEventKind.COMPLETED), Subjects.run_kind_all(RunEventKind.FAILED), Subjects.INFER, Subjects.INFER_CANCEL)
        .kv_read(OUTPUTS_BUCKET)
        .objects_read(PAYLOADS_STORE)
    )
    for store in dedicated_stores:  # the sinks' large outputs of the dedicated pools' tenants
        aggregator.objects_read(store)
    # The gateway serves core request/reply: it answers on the requester's inbox (responses), never JetStream.
    gateway = _service("gateway").sub(f"{Subjects.INFER} {GATEWAY_QUEUE_GROUP}")  # only in its queue group
    gateway.sub(Subjects.INFER_CANCEL)  # every replica: the one holding the call stops it
    gateway.pub(Subjects.inference_event(), Subjects.inference_event_batch())
    recorder = (
        Grants()
        .sub(f"{inbox_prefix('recorder')}.>")
        .provision((EVENTS, RUNS), (RUN_INDEX_BUCKET,))
        .health("recorder")
        .durable(EVENTS, RECORDER_CONSUMER)
        .durable(RUNS, RECORDER_RUNS_CONSUMER)
        .durable(RUNS, RUN_INDEX_CONSUMER)
        .kv_write(RUN_INDEX_BUCKET)  # its one writer: derived from RUNS (services/recorder/runindex.py)
        .sub(Subjects.RECORDER_QUERY)
        .objects_read(PLANS_STORE)  # a plan by reference: its DAG goes to plan_steps
    )
    grants = {
        "planner": planner, "dispatcher": dispatcher, "worker": worker,
        "aggregator": aggregator, "gateway": gateway, "recorder": recorder,
        **{pool_user(pool): _dedicated_worker(pool, tenants) for pool, tenants in dedicated.items()},
    }  # fmt: skip
    return {name: g.build() for name, g in grants.items()}


def tenant_permissions(tenant: str) -> Permissions:
    """A tenant's client, in its own account: submit, cancel and follow its own runs; nothing else."""
    if not is_valid_id(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    user = tenant_user(tenant)
    return (
        Grants()
        .pub(
            Subjects.task(tenant),  # imported from SWARM: lands in TASKS, which acks it
            Subjects.run_event(tenant, "*", RunEventKind.CANCEL),  # likewise, into SWARM's RUNS
            # A consumer on its account's own RUNS (sourced from SWARM's), filtered to one run. Not
            # `$JS.SWARM.API.>`: that import exists for the sourcing consumer alone.
            f"{JS_API}.CONSUMER.CREATE.{RUNS.name}.*.{Subjects.run_all(tenant, '*')}",
        )
        # No plans store: it lives in SWARM, out of a tenant account's reach; a tenant's plan travels inline
        # (up to one message) and the planner stores it by reference for the run. The SDK's one look for the
        # store is answered "not found" by the tenant's own account (where no such stream can exist).
        .pub(f"{JS_API}.STREAM.INFO.{PLANS_STORE.stream}")
        .sub(f"{inbox_prefix(user)}.>")
        # Flow-control requests of its consumer arrive with a reply subject it must answer.
        .answer_requests()
        .build()
    )


def provision_permissions(tenant: str) -> Permissions:
    """`provision-<tenant>`: create (or look at) the tenant account's RUNS stream, nothing else."""
    user = provision_user(tenant)
    return (
        Grants()
        .pub(f"{JS_API}.STREAM.INFO.{RUNS.name}", f"{JS_API}.STREAM.CREATE.{RUNS.name}")
        .sub(f"{inbox_prefix(user)}.>")
        .build()
    )


# --------------------------------------------------------------------------- settings and config


def _split(value: object) -> object:
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


class SecuritySettings(BaseSettings):
    """Users and passwords of the generated NATS authorization config (env prefix SWARM_SECURITY_)."""

    model_config = SettingsConfigDict(env_prefix="SWARM_SECURITY_", extra="ignore")

    planner_password: SecretStr | None = Field(None, description="NATS password of the planner user.")
    dispatcher_password: SecretStr | None = Field(None, description="NATS password of the dispatcher user.")
    worker_password: SecretStr | None = Field(None, description="NATS password of the worker user.")
    aggregator_password: SecretStr | None = Field(None, description="NATS password of the aggregator user.")
    gateway_password: SecretStr | None = Field(None, description="NATS password of the gateway user.")
    recorder_password: SecretStr | None = Field(None, description="NATS password of the recorder user.")
    admin_password: SecretStr | None = Field(
        None, description="NATS password of 'admin' (operators, full access)."
    )
    sys_password: SecretStr | None = Field(
        None, description="NATS password of 'sys' (system account, monitoring)."
    )
    provision_password: SecretStr | None = Field(
        None, description="NATS password of every 'provision-<tenant>' user (creates a tenant's RUNS stream)."
    )
    tenant_max_consumers: int = Field(
        64, ge=1, description="Consumers a tenant account may hold at once (each follow of a run is one)."
    )
    tenant_max_file: ByteSize = Field(
        ByteSize(1 << 30), description="File storage of a tenant account (its copy of its run events), e.g. 1GiB."
    )
    tenant_max_mem: ByteSize = Field(ByteSize(64 << 20), description="Memory storage of a tenant account.")
    tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        (DEFAULT_TENANT,),
        description="Tenants with a client user, comma separated, each 'tenant' or 'tenant:password'.",
    )
    pools: Annotated[tuple[str, ...], NoDecode] = Field(
        (DEFAULT_POOL,),
        description="Worker pools (STEPS subjects) the dispatcher and workers may use, comma separated, each "
        "'pool' (shared by every tenant, user 'worker') or 'pool:tenant+tenant' (dedicated, user 'worker-<pool>', "
        "password SWARM_SECURITY_WORKER_<POOL>_PASSWORD).",
    )
    plaintext: bool = Field(
        False, description="Write passwords in clear instead of bcrypt hashes (tests only)."
    )

    _split_lists = field_validator("tenants", "pools", mode="before")(_split)
    _real_passwords = field_validator(
        *(f"{user}_password" for user in (*SERVICE_USERS, ADMIN_USER, SYSTEM_USER, PROVISION))
    )(refuse_placeholder)

    @field_validator("pools")
    @classmethod
    def _valid_pools(cls, pools: tuple[str, ...]) -> tuple[str, ...]:
        parse_pools(pools)
        return pools

    @field_validator("tenants")
    @classmethod
    def _real_tenant_passwords(cls, tenants: tuple[str, ...]) -> tuple[str, ...]:
        for entry in tenants:
            refuse_placeholder(SecretStr(entry.partition(":")[2]))
        return tenants

    def passwords(self) -> dict[str, SecretStr | None]:
        """Every user's password from the environment (None: to be generated), service users first."""
        found: dict[str, SecretStr | None] = {
            user: getattr(self, f"{user}_password") for user in (*SERVICE_USERS, ADMIN_USER, SYSTEM_USER)
        }
        for entry in self.tenants:
            tenant, _, password = entry.partition(":")
            found[tenant_user(tenant)] = SecretStr(password) if password else None
        if self.tenants:
            found[PROVISION] = self.provision_password
        for pool, tenants in parse_pools(self.pools).items():
            if tenants:
                password = os.environ.get(_env_name(pool_user(pool)))
                found[pool_user(pool)] = refuse_placeholder(SecretStr(password)) if password else None
        return found

    def limits(self) -> TenantLimits:
        """The JetStream limits of every tenant account."""
        return TenantLimits(self.tenant_max_consumers, int(self.tenant_max_file), int(self.tenant_max_mem))

    def tenant_ids(self) -> list[str]:
        return [entry.partition(":")[0] for entry in self.tenants]


def hash_password(password: str, cost: int = BCRYPT_COST) -> str:
    """A bcrypt hash nats-server verifies natively."""
    try:
        import bcrypt
    except ImportError as exc:  # pragma: no cover - bcrypt is a dependency of the deployment tooling
        raise SystemExit(
            "bcrypt is needed to hash NATS passwords: pip install bcrypt (or --plaintext for tests)"
        ) from exc
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


@dataclass(frozen=True)
class TenantLimits:
    """JetStream limits of one tenant account: what a tenant can hold, whatever it tries."""

    max_consumers: int = 64
    max_file: int = 1 << 30  # bytes
    max_mem: int = 64 << 20

    def as_config(self) -> dict[str, object]:
        # One stream: its RUNS. Consumers: its follows (each expires when idle).
        return {
            "max_streams": 1, "max_consumers": self.max_consumers,
            "max_file": self.max_file, "max_mem": self.max_mem,
        }  # fmt: skip


def user_permissions(
    tenants: Iterable[str], pools: Sequence[str] = (DEFAULT_POOL,)
) -> dict[str, Permissions | None]:
    """Every user of every account and its permissions (None: everything in its account)."""
    users: dict[str, Permissions | None] = dict(service_permissions(pools))
    users[ADMIN_USER] = None
    for tenant in tenants:
        users[tenant_user(tenant)] = tenant_permissions(tenant)
        users[provision_user(tenant)] = provision_permissions(tenant)
    return users


def tenant_exports(tenants: Sequence[str]) -> list[dict[str, object]]:
    """What SWARM offers tenant accounts, each subject to its own tenant's account only."""
    exports: list[dict[str, object]] = []
    for tenant in tenants:
        only = [tenant_account(tenant)]
        exports += [
            {"service": Subjects.task(tenant), "accounts": only},
            {"service": Subjects.run_event(tenant, "*", RunEventKind.CANCEL), "accounts": only},
            # The sourcing consumer of the tenant's RUNS: created with a filter inside its subjects only
            # (the filter is the subject's tail, and the server checks the body against it).
            {"service": f"{JS_API}.CONSUMER.CREATE.{RUNS.name}.*.{Subjects.tenant_runs_all(tenant)}", "accounts": only},
            {"stream": f"{Subjects.tenant_delivery(tenant)}.>", "accounts": only},
        ]
    if tenants:
        # Flow-control replies of the sourcing consumers. Harmless to share: a reply reaches only the consumer
        # whose random subject it names, and only releases that consumer's flow control.
        exports.append(
            {"service": f"$JS.FC.{RUNS.name}.>", "accounts": [tenant_account(t) for t in tenants]}
        )
    return exports


def tenant_imports(tenant: str) -> list[dict[str, object]]:
    """What a tenant account takes from SWARM (see `tenant_exports`)."""
    create = f"CONSUMER.CREATE.{RUNS.name}.*.{Subjects.tenant_runs_all(tenant)}"
    return [
        {"service": {"account": ACCOUNT, "subject": Subjects.task(tenant)}},
        {"service": {"account": ACCOUNT, "subject": Subjects.run_event(tenant, "*", RunEventKind.CANCEL)}},
        {"service": {"account": ACCOUNT, "subject": f"{JS_API}.{create}"}, "to": f"{SWARM_JS_API}.{create}"},
        {"service": {"account": ACCOUNT, "subject": f"$JS.FC.{RUNS.name}.>"}},
        {"stream": {"account": ACCOUNT, "subject": f"{Subjects.tenant_delivery(tenant)}.>"}},
    ]


def render_nats_auth(
    passwords: Mapping[str, str],
    tenants: Iterable[str],
    pools: Sequence[str] = (DEFAULT_POOL,),
    *,
    hashed: bool = True,
    limits: TenantLimits = TenantLimits(),
) -> str:
    """The `accounts` and `system_account` blocks of a nats-server config, to `include` in each node's config.

    `passwords` maps every user (services, admin, sys, tenant and provision users) to its clear password.
    """
    tenants = list(tenants)
    secret = hash_password if hashed else (lambda p: p)
    permissions = user_permissions(tenants, pools)

    def user(name: str) -> dict[str, object]:
        entry: dict[str, object] = {"user": name, "password": secret(passwords[name])}
        if permissions[name] is not None:
            entry["permissions"] = permissions[name].as_config()  # type: ignore[union-attr]
        return entry

    accounts: dict[str, object] = {
        ACCOUNT: {
            "jetstream": "enabled",
            "users": [user(name) for name in permissions if not _in_tenant_account(name)],
            "exports": tenant_exports(tenants),
        },
    }
    for tenant in tenants:
        accounts[tenant_account(tenant)] = {
            "jetstream": limits.as_config(),
            "users": [user(tenant_user(tenant)), user(provision_user(tenant))],
            "imports": tenant_imports(tenant),
        }
    accounts[SYSTEM_ACCOUNT] = {"users": [{"user": SYSTEM_USER, "password": secret(passwords[SYSTEM_USER])}]}
    config = {"accounts": accounts, "system_account": SYSTEM_ACCOUNT}
    # nats-server reads JSON; a bcrypt hash ($2b$...) must be quoted, which JSON always does.
    header = (
        "# Generated by `python -m swarm.ops.security nats-config`: NATS accounts, users and permissions. Do not edit.\n"
    )
    body = json.dumps(config, indent=2)
    return header + body[1:-1].strip() + "\n"  # top-level keys without braces, so the file can be `include`d


async def provision_tenant(nc: NatsClient, tenant: str, settings: NatsSettings | None = None) -> bool:
    """Create the tenant account's RUNS stream, sourced from SWARM's RUNS; False when it already exists.

    `nc` is connected as `provision-<tenant>`. Idempotent: the server accepts an identical create again.
    """
    settings = settings or NatsSettings()
    js = nc.jetstream(timeout=settings.request_timeout_s)
    config = StreamConfig(
        name=RUNS.name, subjects=[], description=f"Run events of tenant {tenant}, sourced from {ACCOUNT}'s RUNS.",
        retention=RetentionPolicy.LIMITS, max_age=RUNS.max_age_s,
        storage=StorageType.FILE if settings.stream_storage == "file" else StorageType.MEMORY,
        num_replicas=settings.stream_replicas,
        sources=[StreamSource(
            name=RUNS.name, filter_subject=Subjects.tenant_runs_all(tenant),
            external=ExternalStream(api=SWARM_JS_API, deliver=Subjects.tenant_delivery(tenant)),
        )],
    )  # fmt: skip
    try:
        await js.stream_info(RUNS.name)
        return False
    except NotFoundError:
        await js.add_stream(config)
        return True


def generate(settings: SecuritySettings) -> tuple[str, dict[str, str]]:
    """The auth config, and the passwords that had to be generated (user -> clear password)."""
    passwords, generated = {}, {}
    for user, password in settings.passwords().items():
        if password is None or not password.get_secret_value():
            generated[user] = passwords[user] = secrets.token_urlsafe(24)
        else:
            passwords[user] = password.get_secret_value()
    for tenant in settings.tenant_ids():  # one operator secret for every tenant account's provisioning user
        passwords[provision_user(tenant)] = passwords[PROVISION]
    config = render_nats_auth(
        passwords, settings.tenant_ids(), settings.pools, hashed=not settings.plaintext, limits=settings.limits()
    )
    return config, generated


async def provision_tenants(settings: SecuritySettings, nats_settings: NatsSettings) -> list[str]:
    """Create every tenant account's RUNS stream that is missing (as `provision-<tenant>`); the created ones."""
    password = settings.provision_password
    if password is None:
        raise SystemExit("SWARM_SECURITY_PROVISION_PASSWORD is not set")
    created = []
    for tenant in settings.tenant_ids():
        nc = await nats.connect(
            servers=nats_settings.url.split(","), user=provision_user(tenant), password=password.get_secret_value(),
            inbox_prefix=inbox_prefix(provision_user(tenant)), allow_reconnect=False,
            **tls_options(nats_settings),
        )  # fmt: skip
        try:
            if await provision_tenant(nc, tenant, nats_settings):
                created.append(tenant)
        finally:
            await nc.close()
    return created


def _in_tenant_account(user: str) -> bool:
    return user.startswith((TENANT_USER_PREFIX, PROVISION_USER_PREFIX))


def _env_name(user: str) -> str:
    if user.startswith(TENANT_USER_PREFIX):
        return "SWARM_SECURITY_TENANTS"
    return f"SWARM_SECURITY_{user.upper().replace('-', '_')}_PASSWORD"


def permission_matrix(tenant: str = "<tenant>", pools: Sequence[str] = (DEFAULT_POOL,)) -> str:
    """The users and their permissions as a Markdown table (for README, Security)."""

    def cell(subjects: Iterable[str]) -> str:
        return "<br>".join(f"`{s}`" for s in subjects)

    rows = ["| user | publish | subscribe | replies |", "|---|---|---|---|"]
    users = dict(service_permissions(pools))
    example = tenant_permissions("TENANT")
    users[tenant_user(tenant)] = Permissions(
        tuple(s.replace("TENANT", tenant) for s in example.publish),
        tuple(s.replace("TENANT", tenant) for s in example.subscribe),
        example.responses,
    )
    for name, perms in users.items():
        rows.append(
            f"| {name} | {cell(perms.publish)} | {cell(perms.subscribe)} | {'yes' if perms.responses else 'no'} |"
        )
    rows.append(f"| {ADMIN_USER} | everything in account {ACCOUNT} | everything | yes |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """`nats-config`: write the auth config; `matrix`: print the permission matrix."""
    parser = argparse.ArgumentParser(prog="python -m swarm.ops.security", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    config_cmd = commands.add_parser(
        "nats-config", help="write the NATS accounts/users config (bcrypt hashes)"
    )
    config_cmd.add_argument(
        "--out", type=Path, required=True, help="the file to write (included by nats.conf)"
    )
    config_cmd.add_argument(
        "--secrets-out", type=Path, help="where to write generated passwords (env lines, mode 0600); "
        "without it, missing passwords are an error",
    )  # fmt: skip
    commands.add_parser("matrix", help="print the permission matrix as Markdown")
    commands.add_parser(
        "provision-tenants", help="create each tenant account's RUNS stream (SWARM_NATS_URL, running servers)"
    )
    args = parser.parse_args(argv)
    if args.command == "matrix":
        print(permission_matrix())
        return 0
    if args.command == "provision-tenants":
        created = asyncio.run(provision_tenants(SecuritySettings(), NatsSettings()))
        print(f"created the RUNS stream of: {', '.join(created) or 'none (all present)'}")
        return 0
    # Also the secrets this job only passes by (Grafana's, ClickHouse's): no container starts on a placeholder.
    placeholder = re.compile(rf"(^|[:,]){PLACEHOLDER_PREFIX}")
    placeholders = sorted(name for name, value in os.environ.items() if placeholder.search(value))
    if placeholders:
        print(f"refusing placeholder secrets ({', '.join(placeholders)}): set real ones in compose/.env", file=sys.stderr)
        return 2
    try:
        settings = SecuritySettings()
    except ValidationError as exc:
        print(f"invalid security settings: {exc}", file=sys.stderr)
        return 2
    config, generated = generate(settings)
    if generated and args.secrets_out is None:
        missing = ", ".join(sorted({_env_name(user) for user in generated}))
        print(
            f"missing passwords ({missing}): set them, or pass --secrets-out to generate them",
            file=sys.stderr,
        )
        return 2
    if generated:
        lines = [f"{_env_name(u)}={p}" for u, p in generated.items() if not u.startswith(TENANT_USER_PREFIX)]
        tenants = [
            f"{u.removeprefix(TENANT_USER_PREFIX)}:{p}"
            for u, p in generated.items()
            if u.startswith(TENANT_USER_PREFIX)
        ]
        if tenants:
            lines.append("SWARM_SECURITY_TENANTS=" + ",".join(tenants))
        fd = os.open(args.secrets_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as out:
        out.write(config)
    # Names only: a password never reaches a log.
    print(
        f"wrote {args.out}: users {', '.join(user_permissions(settings.tenant_ids(), settings.pools))}, {SYSTEM_USER}"
    )
    if generated:
        print(f"generated passwords for {', '.join(generated)} into {args.secrets_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
