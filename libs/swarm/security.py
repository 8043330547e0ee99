"""Access control derived from the contracts: NATS users with least-privilege permissions, and their config.

One account (`SWARM`, JetStream enabled) holds every user; permissions, not accounts, separate them:

- a service user per service (planner, dispatcher, worker, aggregator, gateway, recorder), allowed
  exactly the subjects, streams, consumers and buckets that service uses (see `service_permissions`);
- a client user per tenant (`tenant-<tenant>`), allowed to submit to `swarm.tasks.<tenant>`, cancel its
  own runs and follow `swarm.run.<tenant>.>` through an ordered consumer on RUNS whose filter is named in
  the API subject (`$JS.API.CONSUMER.CREATE.RUNS.<name>.swarm.run.<tenant>.>`, which the server checks
  against the request); it receives on its own inbox prefix `_INBOX_tenant-<tenant>` only, so no other
  user's replies or deliveries reach it, and it may not create consumers any other way, read consumer or
  stream info, delete consumers, or touch a bucket;
- `admin` (operators, the CLI's `swarm runs`): every subject of the account; `sys` in the system account
  (server monitoring).

Passwords come from the environment (`SWARM_SECURITY_<USER>_PASSWORD`, tenants in
`SWARM_SECURITY_TENANTS`), or are generated; the config holds only their bcrypt hashes, which
nats-server checks natively (`pip install bcrypt`). Usage:

    python -m swarm.security nats-config --out auth.conf [--secrets-out secrets.env]
    python -m swarm.security matrix          # the permission matrix, as Markdown
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    RECORDER_CONSUMER,
    RECORDER_RUNS_CONSUMER,
    RESULT_PARTITIONS,
    RESULTS,
    RUN_INDEX_BUCKET,
    RUN_STATE_BUCKET,
    RUNS,
    SCRATCHPAD_BUCKET,
    STEPS,
    TASKS,
    WORKERS_CONSUMER_PREFIX,
    BucketSpec,
    StreamSpec,
    Subjects,
    is_valid_id,
)

ACCOUNT = "SWARM"
SYSTEM_ACCOUNT = "SYS"
ADMIN_USER = "admin"
SYSTEM_USER = "sys"
SERVICE_USERS = ("planner", "dispatcher", "worker", "aggregator", "gateway", "recorder")
TENANT_USER_PREFIX = "tenant-"
# Services reply to JetStream and to each other on nats-py's default inbox prefix.
SERVICE_INBOX = "_INBOX.>"
JS_API = "$JS.API"
BCRYPT_COST = 11


def tenant_user(tenant: str) -> str:
    """The NATS user of a tenant's clients."""
    return f"{TENANT_USER_PREFIX}{tenant}"


def inbox_prefix(user: str) -> str:
    """The private inbox prefix of a client user (connect with it: `SWARM_NATS_INBOX_PREFIX`)."""
    return f"_INBOX_{user}"


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
        names = [s.name for s in streams] + [_bucket_stream(b) for b in buckets]
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
        name = _bucket_stream(bucket)
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
        return self.kv_read(bucket).pub(f"$KV.{bucket.name}.>")

    def objects_read(self, store: BucketSpec) -> Grants:
        """Object get: the meta message, then an ordered consumer on the object's chunks (found by stream name lookup)."""
        return self.kv_read(store).pub(f"{JS_API}.STREAM.NAMES")

    def objects_write(self, store: BucketSpec) -> Grants:
        """Object put: chunks and meta, and the purge of a replaced object's old chunks."""
        return self.objects_read(store).pub(
            f"$O.{store.name}.>", f"{JS_API}.STREAM.PURGE.{_bucket_stream(store)}"
        )

    def answer_requests(self) -> Grants:
        """Publish replies to the requests it receives (whatever their reply subject)."""
        self.responses = True
        return self

    def health(self, service: str) -> Grants:
        """Answer (and send, for the container health check) `swarm.health.<service>`."""
        return self.answer_requests().pub(Subjects.health(service)).sub(Subjects.health(service))

    def build(self) -> Permissions:
        return Permissions(tuple(self.publish), tuple(self.subscribe), self.responses)


def _bucket_stream(bucket: BucketSpec) -> str:
    return f"{'KV' if bucket.kind == 'kv' else 'OBJ'}_{bucket.name}"


def _service(name: str) -> Grants:
    """What every service does: JetStream replies on its inbox, provisioning, its health probe."""
    return Grants().sub(SERVICE_INBOX).provision(ALL_STREAMS, ALL_BUCKETS).health(name)


def service_permissions(pools: Sequence[str] = (DEFAULT_POOL,)) -> dict[str, Permissions]:
    """Per service user: exactly what the service's code publishes, consumes and reads (see each service)."""
    planner = (
        _service("planner")
        .durable(TASKS, PLANNER_CONSUMER)
        .pub(Subjects.run_kind_all("planned"), Subjects.run_kind_all("rejected"), Subjects.INFER)
        .kv_write(RUN_INDEX_BUCKET)
    )
    dispatcher = _service("dispatcher").durable(RUNS, DISPATCHER_PLANS_CONSUMER).read_stream(RUNS)
    for partition in range(RESULT_PARTITIONS):
        dispatcher.durable(RESULTS, f"{DISPATCHER_RESULTS_CONSUMER}-{partition}")
    dispatcher.pub(
        *(Subjects.steps(pool) for pool in pools),
        Subjects.step_event("*"), Subjects.step_event_batch("*"),
        *(Subjects.run_kind_all(kind) for kind in ("progress", "executed", "failed", "cancelled")),
    ).kv_write(RUN_STATE_BUCKET).kv_write(RUN_INDEX_BUCKET).kv_write(DISPATCHER_LEASES_BUCKET)  # fmt: skip
    worker = _service("worker")
    for pool in pools:
        worker.durable(STEPS, f"{WORKERS_CONSUMER_PREFIX}-{pool}")
    worker.pub(
        Subjects.RESULTS_ALL, Subjects.step_event("*"), Subjects.step_event_batch("*"), Subjects.INFER,
    ).sub(
        # Core subscriptions (no JetStream) to skip queued steps of runs that ended meanwhile.
        Subjects.run_kind_all("cancelled"), Subjects.run_kind_all("failed"),
    ).kv_write(OUTPUTS_BUCKET).objects_write(PAYLOADS_STORE).kv_write(SCRATCHPAD_BUCKET).kv_write(MEMORY_BUCKET).kv_read(
        RUN_STATE_BUCKET  # a run's end is believed when its checkpoint confirms it
    )  # fmt: skip
    aggregator = (
        _service("aggregator")
        .durable(RUNS, AGGREGATOR_CONSUMER)
        .pub(Subjects.run_kind_all("completed"), Subjects.run_kind_all("failed"), Subjects.INFER)
        .kv_read(OUTPUTS_BUCKET)
        .objects_read(PAYLOADS_STORE)
        .kv_write(RUN_INDEX_BUCKET)
    )
    # The gateway serves core request/reply: it answers on the requester's inbox (responses), never JetStream.
    gateway = _service("gateway").sub(f"{Subjects.INFER} {GATEWAY_QUEUE_GROUP}")  # only in its queue group
    gateway.pub(Subjects.inference_event(), Subjects.inference_event_batch())
    recorder = (
        Grants()
        .sub(SERVICE_INBOX)
        .provision((EVENTS, RUNS), ())
        .health("recorder")
        .durable(EVENTS, RECORDER_CONSUMER)
        .durable(RUNS, RECORDER_RUNS_CONSUMER)
        .sub(Subjects.RECORDER_QUERY)
    )
    grants = {
        "planner": planner, "dispatcher": dispatcher, "worker": worker,
        "aggregator": aggregator, "gateway": gateway, "recorder": recorder,
    }  # fmt: skip
    return {name: g.build() for name, g in grants.items()}


def tenant_permissions(tenant: str) -> Permissions:
    """A tenant's client: submit, cancel and follow its own runs; nothing else."""
    if not is_valid_id(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    user = tenant_user(tenant)
    return (
        Grants()
        .pub(
            Subjects.task(tenant),
            Subjects.run_event(tenant, "*", "cancel"),
            # An ordered consumer on RUNS whose filter (the last tokens) lies inside the tenant's subjects;
            # the server refuses a request whose body filters anything else than its subject names.
            f"{JS_API}.CONSUMER.CREATE.{RUNS.name}.*.{Subjects.run_all(tenant, '*')}",
        )
        .sub(f"{inbox_prefix(user)}.>")
        # Flow-control requests of its ordered consumer arrive with a reply subject it must answer.
        .answer_requests()
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
    tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        (DEFAULT_TENANT,),
        description="Tenants with a client user, comma separated, each 'tenant' or 'tenant:password'.",
    )
    pools: Annotated[tuple[str, ...], NoDecode] = Field(
        (DEFAULT_POOL,),
        description="Worker pools (STEPS subjects) the dispatcher and workers may use, comma separated.",
    )
    plaintext: bool = Field(
        False, description="Write passwords in clear instead of bcrypt hashes (tests only)."
    )

    _split_lists = field_validator("tenants", "pools", mode="before")(_split)

    def passwords(self) -> dict[str, SecretStr | None]:
        """Every user's password from the environment (None: to be generated), service users first."""
        found: dict[str, SecretStr | None] = {
            user: getattr(self, f"{user}_password") for user in (*SERVICE_USERS, ADMIN_USER, SYSTEM_USER)
        }
        for entry in self.tenants:
            tenant, _, password = entry.partition(":")
            found[tenant_user(tenant)] = SecretStr(password) if password else None
        return found

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


def user_permissions(
    tenants: Iterable[str], pools: Sequence[str] = (DEFAULT_POOL,)
) -> dict[str, Permissions | None]:
    """Every user of the SWARM account and its permissions (None: everything in the account)."""
    users: dict[str, Permissions | None] = dict(service_permissions(pools))
    users[ADMIN_USER] = None
    for tenant in tenants:
        users[tenant_user(tenant)] = tenant_permissions(tenant)
    return users


def render_nats_auth(
    passwords: Mapping[str, str],
    tenants: Iterable[str],
    pools: Sequence[str] = (DEFAULT_POOL,),
    *,
    hashed: bool = True,
) -> str:
    """The `accounts` and `system_account` blocks of a nats-server config, to `include` in each node's config.

    `passwords` maps every user (services, admin, sys, tenant users) to its clear password.
    """
    secret = hash_password if hashed else (lambda p: p)
    users = []
    for name, permissions in user_permissions(tenants, pools).items():
        user: dict[str, object] = {"user": name, "password": secret(passwords[name])}
        if permissions is not None:
            user["permissions"] = permissions.as_config()
        users.append(user)
    config = {
        "accounts": {
            ACCOUNT: {"jetstream": "enabled", "users": users},
            SYSTEM_ACCOUNT: {"users": [{"user": SYSTEM_USER, "password": secret(passwords[SYSTEM_USER])}]},
        },
        "system_account": SYSTEM_ACCOUNT,
    }
    # nats-server reads JSON; a bcrypt hash ($2b$...) must be quoted, which JSON always does.
    header = (
        "# Generated by `python -m swarm.security nats-config`: NATS users and permissions. Do not edit.\n"
    )
    body = json.dumps(config, indent=2)
    return header + body[1:-1].strip() + "\n"  # top-level keys without braces, so the file can be `include`d


def generate(settings: SecuritySettings) -> tuple[str, dict[str, str]]:
    """The auth config, and the passwords that had to be generated (user -> clear password)."""
    passwords, generated = {}, {}
    for user, password in settings.passwords().items():
        if password is None or not password.get_secret_value():
            generated[user] = passwords[user] = secrets.token_urlsafe(24)
        else:
            passwords[user] = password.get_secret_value()
    config = render_nats_auth(passwords, settings.tenant_ids(), settings.pools, hashed=not settings.plaintext)
    return config, generated


def _env_name(user: str) -> str:
    if user.startswith(TENANT_USER_PREFIX):
        return "SWARM_SECURITY_TENANTS"
    return f"SWARM_SECURITY_{user.upper()}_PASSWORD"


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
    parser = argparse.ArgumentParser(prog="python -m swarm.security", description=__doc__.splitlines()[0])
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
    args = parser.parse_args(argv)
    if args.command == "matrix":
        print(permission_matrix())
        return 0
    settings = SecuritySettings()
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
