"""The recorder's settings (env prefix SWARM_RECORDER_), with the shared NATS and ClickHouse settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from swarm.contracts import MESSAGE_BODY_MAX_BYTES
from swarm.settings import ClickHouseSettings, NatsSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class RecorderSettings(BaseSettings):
    """How the recorder batches events into ClickHouse."""

    model_config = SettingsConfigDict(env_prefix="SWARM_RECORDER_", extra="ignore")

    nats: NatsSettings = Field(default_factory=NatsSettings, description="NATS (env SWARM_NATS_*).")
    clickhouse: ClickHouseSettings = Field(
        default_factory=ClickHouseSettings, description="The event log (env SWARM_CLICKHOUSE_*)."
    )
    batch_max_events: int = Field(10_000, ge=1, le=50_000, description="Insert when this many events are pending.")
    batch_max_ms: float = Field(500.0, gt=0, description="Insert when the oldest pending event waited this long.")
    fetch_timeout_s: float = Field(
        1.0, gt=0, description="Longest wait of one fetch while nothing is pending, and between two reads of a busy stream.",
    )
    retry_max_s: float = Field(30.0, gt=0, description="Longest back-off between inserts while ClickHouse fails.")
    # Short: a killed recorder's fetched, unstored events come back this soon (redeliveries collapse by event_id).
    ack_wait_s: float = Field(15.0, gt=0, description="Redelivery time of an unacknowledged event.")
    query_max_reply_bytes: int = Field(
        MESSAGE_BODY_MAX_BYTES, gt=0,
        description="Largest message of a query answer (the body of one NATS message); larger answers come in parts.",
    )
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="USD per million (prompt, completion) tokens by model, as JSON, e.g. "
        '\'{"llama-70b": [0.6, 0.8], "*": [0.1, 0.1]}\'; "*" prices the rest. Cost is fixed when a call is recorded.',
    )
    migrate: bool = Field(
        True, description="Create the database and apply migrations at start-up; false where a DDL user's job "
        "does it (compose: clickhouse-migrate), so the recorder's own user only inserts and reads.",
    )
    nice: int = Field(
        5, ge=0, le=19, description="CPU priority below the services on a step's path (os.nice): when the CPUs are "
        "busy, the event log may fall behind by a moment, a step should not wait for it.",
    )
    log_level: str = Field("INFO", description="Log level.")
