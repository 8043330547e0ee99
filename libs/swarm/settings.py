"""Settings shared by every service; each service adds its own class with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# How `.env.example` marks a secret to replace; a value that still starts with it is refused at start-up.
PLACEHOLDER_PREFIX = "change-me"


def refuse_placeholder(value: SecretStr | None) -> SecretStr | None:
    """A secret, unless it is still the example's placeholder (then a ValueError naming the fix)."""
    if value is not None and value.get_secret_value().startswith(PLACEHOLDER_PREFIX):
        raise ValueError(f"is a '{PLACEHOLDER_PREFIX}-*' placeholder from .env.example: set a real secret")
    return value


class NatsSettings(BaseSettings):
    """How to reach NATS and how streams are provisioned (env prefix SWARM_NATS_)."""

    model_config = SettingsConfigDict(env_prefix="SWARM_NATS_", extra="ignore")

    url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma separated.")
    user: str | None = Field(None, description="NATS user name.")
    password: SecretStr | None = Field(None, description="NATS password (never logged).")
    creds_file: Path | None = Field(None, description="NATS credentials file (JWT + nkey).")
    tls_ca_file: Path | None = Field(None, description="CA bundle to verify the server's TLS certificate.")
    tls_cert_file: Path | None = Field(None, description="Client certificate, for servers that verify clients (mTLS).")
    tls_key_file: Path | None = Field(None, description="Private key of the client certificate.")
    inbox_prefix: str | None = Field(
        None, description="Reply inbox prefix; unset: `_INBOX_<user>` for a named user (the only inbox it may read)."
    )
    stream_replicas: int = Field(1, ge=1, le=5, description="Replicas of every stream and bucket (3 in a cluster).")
    stream_storage: str = Field("file", pattern="^(file|memory)$", description="JetStream storage type.")
    request_timeout_s: float = Field(10.0, gt=0, description="JetStream API and publish-ack timeout.")

    _real_password = field_validator("password")(refuse_placeholder)


class ClickHouseSettings(BaseSettings):
    """Where the event log lives (env prefix SWARM_CLICKHOUSE_)."""

    model_config = SettingsConfigDict(env_prefix="SWARM_CLICKHOUSE_", extra="ignore")

    mode: str = Field("chdb", pattern="^(chdb|http)$", description="'chdb' (in-process engine) or 'http' (a server).")
    path: Path = Field(Path(".swarm/clickhouse"), description="Data directory of the in-process engine.")
    host: str = Field("127.0.0.1", description="ClickHouse server host (http mode).")
    port: int = Field(8123, description="ClickHouse server HTTP port (http mode).")
    user: str = Field("default", description="ClickHouse user (http mode).")
    password: SecretStr = Field(SecretStr(""), description="ClickHouse password (http mode, never logged).")
    database: str = Field("swarm", description="Database holding the swarm tables.")

    _real_password = field_validator("password")(refuse_placeholder)


class StackSettings(BaseSettings):
    """The embedded local stack started by `swarm up` (env prefix SWARM_)."""

    model_config = SettingsConfigDict(env_prefix="SWARM_", extra="ignore")

    home: Path = Field(Path(".swarm"), description="Directory holding all local data, logs and pid files.")
    nats_port: int = Field(
        4222, ge=0, description="Client port of the embedded nats-server (0: it picks a free one as it listens)."
    )
    nats_monitor_port: int = Field(
        8222, ge=0, description="Monitoring port of the embedded nats-server (0: it picks a free one as it listens)."
    )
    nats_cluster: int = Field(
        1, ge=1, le=5,
        description="NATS nodes of the local stack: 1, or 3 for a JetStream cluster on loopback (streams at 3 replicas;"
        " node i uses the client, monitoring and route ports + i - 1).",
    )  # fmt: skip
    nats_cluster_port: int = Field(6222, description="Route port of the first local cluster node.")
    gateway_backend: str = Field("llamacpp", description="Inference backend of the embedded gateway.")
    workers: int = Field(2, ge=1, description="Worker-pool processes.")
    dispatchers: int = Field(1, ge=1, description="Dispatcher replicas.")

    @model_validator(mode="after")
    def _cluster_ports_fixed(self) -> StackSettings:
        # A cluster's nodes name each other's route ports in their configuration files, written before they start.
        if self.nats_cluster > 1 and not (self.nats_port and self.nats_monitor_port and self.nats_cluster_port):
            raise ValueError("a NATS cluster needs its ports set (0, picked by the server, is for one node only)")
        return self
