"""The event log in ClickHouse: open the engine (in-process chdb or a server), migrate, insert, query.

The same schema and SQL serve both modes; only `ClickHouseSettings` differ. In chdb mode the
data directory belongs to one process (the recorder): everyone else reads through it with
`query_via_recorder`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError

from swarm.contracts import InferenceEvent, StepEvent
from swarm.settings import ClickHouseSettings

log = logging.getLogger(__name__)

STEP_EVENTS_TABLE = "step_events"
INFERENCE_CALLS_TABLE = "inference_calls"
RUNS_TABLE = "runs"
PLAN_STEPS_TABLE = "plan_steps"
MIGRATIONS_TABLE = "schema_migrations"

STEP_EVENT_COLUMNS = (
    "event_id", "run_id", "tenant", "step_id", "agent_id", "attempt", "kind", "at", "duration_ms",
    "prompt_tokens", "completion_tokens", "worker_id", "error", "attributes",
)  # fmt: skip
INFERENCE_CALL_COLUMNS = (
    "event_id", "run_id", "step_id", "caller", "model", "backend", "ok", "error", "prompt_tokens",
    "completion_tokens", "queue_ms", "duration_ms", "at", "ttft_ms", "cost_usd",
)  # fmt: skip
PLAN_STEP_COLUMNS = ("run_id", "step_id", "agent_id", "depends_on")
# USD per million (prompt, completion) tokens, by model name; "*" prices every model not listed.
ModelPrices = Mapping[str, tuple[float, float]]
RUN_COLUMNS = (
    "run_id", "tenant", "status", "goal", "error", "agents_count", "steps_total", "steps_succeeded",
    "steps_failed", "steps_cancelled", "retries", "prompt_tokens", "completion_tokens", "submitted_at",
    "finished_at", "wall_ms", "version",
)  # fmt: skip

# Written for speed: one block from one writer gains nothing from a parallel pipeline, whose thread
# hand-offs cost about a quarter of an insert's CPU (chdb, 3,000 step events per insert, 2 cores).
INSERT_SETTINGS = {"max_threads": 1}

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.up\.sql$")


class EventLogError(RuntimeError):
    """The event log cannot be opened, migrated or queried."""


class EventLogLocked(EventLogError):
    """Another process holds the chdb data directory."""


# --------------------------------------------------------------------------- connection


def _lock_holder(data_dir: Path) -> str | None:
    """Who holds the engine's lock on `data_dir` ('pid N' or 'another process'), or None if nobody.

    ClickHouse flocks `<dir>/status` while an engine runs there; chdb's own exception only says
    "Error initializing EmbeddedServer" (the lock message goes to stderr), so we probe the lock.
    """
    status = data_dir / "status"
    try:
        fd = status.open("rb")
    except FileNotFoundError:
        return None
    with fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            match = re.search(rb"PID:\s*(\d+)", fd.read(256))
            return f"pid {match.group(1).decode()}" if match else "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def open_client(settings: ClickHouseSettings) -> Client:
    """A clickhouse-connect client without a default database (it may not exist yet).

    Raises EventLogLocked when another process owns the chdb directory.
    """
    if settings.mode == "http":
        return clickhouse_connect.get_client(
            host=settings.host, port=settings.port, username=settings.user,
            password=settings.password.get_secret_value()
        )
    data_dir = settings.path.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(data_dir))
    except ProgrammingError as exc:
        holder = _lock_holder(data_dir)
        if holder is not None:
            raise EventLogLocked(
                f"the event log {data_dir} is in use by {holder}: only one process may open a chdb "
                "directory (the recorder owns it; read through it with `query_via_recorder`)"
            ) from exc
        if "already initialized with path" in str(exc):
            raise EventLogError(
                f"this process already has the chdb engine open on another directory than {data_dir}: "
                "chdb allows one directory per process"
            ) from exc
        raise EventLogError(f"cannot open the event log {data_dir}: {exc}") from exc


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        """sha256 of the file, recorded so an edited, already-applied file is noticed."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def statements(self) -> list[str]:
        """The file's statements: split on ';' at the end of a line, comment lines dropped."""
        lines = [line for line in self.path.read_text().splitlines() if not line.lstrip().startswith("--")]
        return [stmt.strip() for stmt in re.split(r";\s*$", "\n".join(lines), flags=re.M) if stmt.strip()]


def find_migrations(directory: Path) -> list[Migration]:
    """The `NNNN_name.up.sql` files of `directory`, in order; duplicate numbers are an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.up.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise EventLogError(f"migration file {path.name} is not named NNNN_name.up.sql")
        version = int(match.group(1))
        if version in found:
            raise EventLogError(f"two migrations numbered {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


# --------------------------------------------------------------------------- rows


def _dedup_token(table: str, event_ids: Iterable[str]) -> str:
    """The same batch (same ids) gets the same token, so ClickHouse drops a re-inserted block.

    sha256 of the table and the ids, each after a NUL, hashed in one call (one update per id cost more)."""
    return hashlib.sha256("\0".join((table, *event_ids)).encode()).hexdigest()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def datetime64_ticks(at: datetime) -> int:
    """Microseconds since the epoch: what a DateTime64(6, 'UTC') column stores; a naive time is taken as UTC.

    Written for speed: given ints, the driver writes them as they are, where its own conversion of each
    datetime cost more (and the recorder writes several per step)."""
    if at.tzinfo is None:  # the column's zone, as the readers of the log take a naive time
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _MICROSECOND


def step_event_columns(events: Sequence[StepEvent]) -> list[list[Any]]:
    """Column-oriented data for `step_events`, in STEP_EVENT_COLUMNS order (the contracts bound ints to the column types)."""
    return [
        [e.event_id for e in events],
        [e.run_id for e in events],
        [e.tenant for e in events],
        [e.step_id for e in events],
        [e.agent_id for e in events],
        [e.attempt for e in events],
        [str(e.kind) for e in events],
        [datetime64_ticks(e.at) for e in events],
        [e.duration_ms for e in events],
        [e.prompt_tokens for e in events],
        [e.completion_tokens for e in events],
        [e.worker_id for e in events],
        [e.error for e in events],
        [e.attributes for e in events],
    ]


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, prices: ModelPrices) -> float:
    """What a call cost at `prices` (0 for a model without a price and no "*" entry)."""
    price = prices.get(model) or prices.get("*")
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def inference_call_columns(events: Sequence[InferenceEvent], prices: ModelPrices | None = None) -> list[list[Any]]:
    """Column-oriented data for `inference_calls`, in INFERENCE_CALL_COLUMNS order."""
    prices = prices or {}
    return [
        [e.event_id for e in events],
        [e.run_id for e in events],
        [e.step_id for e in events],
        [e.caller for e in events],
        [e.model for e in events],
        [e.backend for e in events],
        [e.ok for e in events],
        [e.error for e in events],
        [e.prompt_tokens for e in events],
        [e.completion_tokens for e in events],
        [e.queue_ms for e in events],
        [e.duration_ms for e in events],
        [datetime64_ticks(e.at) for e in events],
        # The gateway may or may not report time to first token (an additive field of InferenceEvent).
        [getattr(e, "ttft_ms", None) for e in events],
        [cost_usd(e.model, e.prompt_tokens, e.completion_tokens, prices) for e in events],
    ]


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        # The driver returns our DateTime64(6, 'UTC') columns as naive UTC datetimes.
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_rows(rows: list[dict[str, Any]]) -> bytes:
    """Rows as the recorder's JSON reply: {"rows": [...]}, times in ISO 8601 with their UTC offset."""
    return json.dumps({"rows": rows}, default=_json_value).encode()


class ResultTooLarge(EventLogError):
    """A query result over what one answer may carry, or a row over what one message may."""


def encode_parts(rows: Sequence[Mapping[str, Any]], max_part_bytes: int, max_total_bytes: int) -> list[bytes]:
    """Rows as the recorder's reply in parts: {"rows": [...], "part": i, "more": bool}, each at most
    `max_part_bytes`; there is always at least one part (an empty result is one part with no rows)."""
    envelope = len(b'{"rows": [], "part": 0000000, "more": false}')
    parts: list[bytes] = []
    chunk: list[bytes] = []
    size = envelope
    total = 0

    def close(more: bool) -> None:
        more_text = b"true" if more else b"false"
        parts.append(b'{"rows": [' + b", ".join(chunk) + b'], "part": %d, "more": %s}' % (len(parts), more_text))

    for i, row in enumerate(rows):
        encoded = json.dumps(row, default=_json_value).encode()
        total += len(encoded) + 2
        if total > max_total_bytes:
            raise ResultTooLarge(f"the result is over the {max_total_bytes} bytes one answer may carry")
        if envelope + len(encoded) > max_part_bytes:
            raise ResultTooLarge(f"row {i} is {len(encoded)} bytes, over the {max_part_bytes} one message may carry")
        if size + len(encoded) + 2 > max_part_bytes:
            close(more=True)
            chunk, size = [], envelope
        chunk.append(encoded)
        size += len(encoded) + 2
    close(more=False)
    return parts


# --------------------------------------------------------------------------- the event log


class EventLog:
    """The swarm database: a writer client for inserts and a reader client for queries.

    Two clients so a long query in one thread does not hold up inserts in another (each chdb
    client has its own engine handle and lock; both share the one engine of the process).
    """

    def __init__(self, settings: ClickHouseSettings, *, create_database: bool = True) -> None:
        self.settings = settings
        self.database = settings.database
        self._writer = open_client(settings)
        try:
            if create_database:  # not by an insert-only user: the migrations job made it
                self._writer.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            self._writer.database = self.database
            self._reader = open_client(settings)
            self._reader.database = self.database
        except BaseException:
            self._writer.close()
            raise
        self._column_types: dict[str, list[str]] = {}
        self.model_prices: ModelPrices = {}

    @classmethod
    def open(
        cls, settings: ClickHouseSettings, migrations_dir: Path | None = None, *, create_database: bool = True
    ) -> EventLog:
        """Open, create the database if missing, and apply pending migrations when a directory is given."""
        eventlog = cls(settings, create_database=create_database)
        if migrations_dir is not None:
            try:
                eventlog.migrate(migrations_dir)
            except BaseException:
                eventlog.close()
                raise
        return eventlog

    def close(self) -> None:
        """Close both clients (in chdb mode, the last close releases the directory)."""
        for client in (getattr(self, "_reader", None), self._writer):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ migrations

    def migrate(self, migrations_dir: Path) -> list[str]:
        """Apply the migrations not yet recorded in schema_migrations, in order; returns the names applied."""
        self._writer.command(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version UInt32, name String, checksum String, "
            "applied_at DateTime64(6, 'UTC') DEFAULT now64(6)) ENGINE = ReplacingMergeTree ORDER BY version"
        )
        applied = {
            row["version"]: row["checksum"]
            for row in self.query(f"SELECT version, checksum FROM {MIGRATIONS_TABLE} FINAL")
        }
        names = []
        for migration in find_migrations(migrations_dir):
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    log.warning("migration %s changed after it was applied; add a new one instead", migration.path.name)
                continue
            for statement in migration.statements():
                self._writer.command(statement)
            self._writer.insert(
                MIGRATIONS_TABLE,
                [[migration.version], [migration.name], [migration.checksum]],
                column_names=["version", "name", "checksum"],
                column_oriented=True,
            )
            names.append(migration.path.name)
            log.info("applied migration %s", migration.path.name)
        return names

    # ------------------------------------------------------------------ inserts

    def insert_columns(
        self, table: str, column_names: Sequence[str], columns: list[list[Any]], dedup_token: str | None = None
    ) -> int:
        """Insert column-oriented data; `dedup_token` makes a repeated insert of the same block a no-op."""
        if not columns or not columns[0]:
            return 0
        if table not in self._column_types:
            described = {row["name"]: row["type"] for row in self.query(f"DESCRIBE TABLE {table}")}
            self._column_types[table] = [described[name] for name in column_names]
        settings: dict[str, Any] = dict(INSERT_SETTINGS)
        if dedup_token:
            settings["insert_deduplication_token"] = dedup_token
        self._writer.insert(
            table,
            columns,
            column_names=list(column_names),
            column_type_names=self._column_types[table],
            column_oriented=True,
            settings=settings,
        )
        return len(columns[0])

    def insert_step_events(self, events: Sequence[StepEvent]) -> int:
        """Insert step events in one block, de-duplicated by event_id on read (and by block on retry)."""
        token = _dedup_token(STEP_EVENTS_TABLE, (e.event_id for e in events))
        return self.insert_columns(STEP_EVENTS_TABLE, STEP_EVENT_COLUMNS, step_event_columns(events), token)

    def insert_inference_events(self, events: Sequence[InferenceEvent]) -> int:
        """Insert inference calls in one block."""
        token = _dedup_token(INFERENCE_CALLS_TABLE, (e.event_id for e in events))
        return self.insert_columns(
            INFERENCE_CALLS_TABLE, INFERENCE_CALL_COLUMNS, inference_call_columns(events, self.model_prices), token
        )

    def insert_plan_steps(self, rows: Sequence[tuple[str, str, str, Sequence[str]]]) -> int:
        """Write (run_id, step_id, agent_id, depends_on) rows: the plan's edges, for the critical path."""
        columns = [[row[i] for row in rows] for i in range(len(PLAN_STEP_COLUMNS))]
        columns[3] = [list(deps) for deps in columns[3]]
        return self.insert_columns(PLAN_STEPS_TABLE, PLAN_STEP_COLUMNS, columns)

    def insert_runs(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write run rows (dicts with RUN_COLUMNS keys); the highest `version` of a run_id wins."""
        columns = [[row[name] for row in rows] for name in RUN_COLUMNS]
        return self.insert_columns(RUNS_TABLE, RUN_COLUMNS, columns)

    # ------------------------------------------------------------------ queries

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows as dicts. Parameters use ClickHouse's `{name:Type}` placeholders."""
        result = self._reader.query(
            sql, parameters=dict(parameters) if parameters else None, settings=dict(settings) if settings else None
        )
        return list(result.named_results())
