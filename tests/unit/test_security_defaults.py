"""Safe defaults: placeholder secrets refused, loopback ports, mTLS on in compose, ClickHouse users scoped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from swarm.ops.security import SecuritySettings, main, parse_pools, permission_matrix, service_permissions
from swarm.settings import ClickHouseSettings, NatsSettings

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
USERS_XML = COMPOSE_DIR / "clickhouse/users.d/swarm-users.xml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())


@pytest.mark.parametrize(
    ("variable", "settings"),
    [
        ("SWARM_NATS_PASSWORD", NatsSettings),
        ("SWARM_CLICKHOUSE_PASSWORD", ClickHouseSettings),
        ("SWARM_SECURITY_WORKER_PASSWORD", SecuritySettings),
        ("SWARM_SECURITY_PROVISION_PASSWORD", SecuritySettings),
    ],
)
def test_startup_refuses_placeholder_secrets(
    variable: str, settings: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "change-me-worker")
    with pytest.raises(ValidationError, match="placeholder"):
        settings()
    monkeypatch.setenv(variable, "a-real-secret")
    settings()


def test_tenant_placeholder_passwords_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_SECURITY_TENANTS", "default:s3cret,acme:change-me-tenant-acme")
    with pytest.raises(ValidationError, match="placeholder"):
        SecuritySettings()


def test_nats_config_job_refuses_any_placeholder_it_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Grafana's and ClickHouse's secrets are only passed by the nats-auth job, which gates every container."""
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "change-me-grafana")
    assert main(["nats-config", "--out", str(tmp_path / "auth.conf"), "--secrets-out", str(tmp_path / "s.env")]) == 2
    assert "GRAFANA_ADMIN_PASSWORD" in capsys.readouterr().err
    assert not (tmp_path / "auth.conf").exists()


def test_compose_publishes_ports_on_loopback_unless_configured(compose: dict[str, Any]) -> None:
    published = {
        name: port for name, service in compose["services"].items() for port in service.get("ports", [])
    }
    assert published, "nothing published?"
    for name, port in published.items():
        assert port.startswith(("127.0.0.1:", "${SWARM_BIND_ADDRESS:-127.0.0.1}:")), (name, port)


def test_tls_with_client_certificates_is_on_in_compose(compose: dict[str, Any]) -> None:
    common = (COMPOSE_DIR / "nats/common.conf").read_text()
    assert 'include "tls.conf"' in common
    tls = (COMPOSE_DIR / "nats/tls.conf").read_text()
    assert "verify: true" in tls
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if "SWARM_NATS_URL" in env:  # every NATS client verifies the servers and presents its certificate
            assert {"SWARM_NATS_TLS_CA_FILE", "SWARM_NATS_TLS_CERT_FILE", "SWARM_NATS_TLS_KEY_FILE"} <= set(env), name
            assert {"nats-ca", "nats-client-cert", "nats-client-key"} <= set(service.get("secrets", [])), name
    for node in ("nats-1", "nats-2", "nats-3"):
        assert {"nats-ca", "nats-server-cert", "nats-server-key"} <= set(compose["services"][node]["secrets"])
    assert all(secret["file"].startswith("./certs/") for secret in compose["secrets"].values())


def test_clickhouse_users_split_by_role_and_scoped_to_the_compose_network(compose: dict[str, Any]) -> None:
    root = ET.parse(USERS_XML).getroot()
    users = root.find("users")
    assert users is not None

    def grants(user: str) -> str:
        return " ".join(q.text or "" for q in users.findall(f"{user}/grants/query"))

    assert "CREATE TABLE" in grants("swarm_migrator") and "ALTER" in grants("swarm_migrator")
    for runtime in ("swarm_recorder", "grafana"):  # cannot rewrite history
        assert not any(word in grants(runtime) for word in ("CREATE", "ALTER", "DROP", "TRUNCATE")), runtime
    assert grants("swarm_recorder") == "GRANT SELECT, INSERT ON swarm.*"
    for user in users:
        networks = user.findall("networks/*")
        assert networks and all(n.get("from_env") == "CLICKHOUSE_ALLOWED_NETWORK" for n in networks), user.tag
        assert "::/0" not in ET.tostring(user, encoding="unicode")
    clickhouse = compose["services"]["clickhouse"]["environment"]
    assert clickhouse["CLICKHOUSE_ALLOWED_NETWORK"] == "${SWARM_INTERNAL_SUBNET:-172.28.0.0/16}"
    assert compose["networks"]["default"]["ipam"]["config"][0]["subnet"] == "${SWARM_INTERNAL_SUBNET:-172.28.0.0/16}"
    recorder = compose["services"]["recorder"]["environment"]
    assert recorder["SWARM_CLICKHOUSE_USER"] == "swarm_recorder" and recorder["SWARM_RECORDER_MIGRATE"] == "false"
    migrate = compose["services"]["clickhouse-migrate"]
    assert migrate["environment"]["SWARM_CLICKHOUSE_USER"] == "swarm_migrator"
    assert compose["services"]["recorder"]["depends_on"]["clickhouse-migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_read_only_profile_constrains_every_limit_it_sets() -> None:
    """readonly=2 lets Grafana SET settings: each limit of its profile is a constraint (no SET max_memory_usage=0)."""
    profile = ET.parse(USERS_XML).getroot().find("profiles/grafana")
    assert profile is not None and profile.findtext("readonly") == "2"
    constraints = profile.find("constraints")
    assert constraints is not None
    limits = [child.tag for child in profile if child.tag != "constraints"]
    for name in limits:
        constraint = constraints.find(name)
        assert constraint is not None, f"{name} is not constrained"
        assert constraint.find("const") is not None or constraint.findtext("min") not in (None, "0"), name
        if constraint.find("const") is None:
            assert float(constraint.findtext("max") or "inf") <= float(profile.findtext(name) or 0), name


def test_permission_matrix_names_each_service_inbox() -> None:
    matrix = permission_matrix()
    for service in ("planner", "dispatcher", "worker", "aggregator", "gateway", "recorder"):
        assert f"`_INBOX_{service}.>`" in matrix
    assert "`_INBOX.>`" not in matrix and "STREAM.PURGE" not in matrix


def test_pools_are_shared_or_dedicated_and_a_dedicated_pool_gets_its_own_user(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_pools(("default", "acmepool:acme+initech")) == {"default": (), "acmepool": ("acme", "initech")}
    for bad in (("acmepool:",), ("a", "a:acme"), ("pool:acme.x",)):
        with pytest.raises(ValueError):
            parse_pools(bad)
    monkeypatch.setenv("SWARM_SECURITY_POOLS", "default,acmepool:acme")
    monkeypatch.setenv("SWARM_SECURITY_WORKER_ACMEPOOL_PASSWORD", "change-me-pool")
    with pytest.raises(ValueError, match="placeholder"):
        SecuritySettings().passwords()
    monkeypatch.setenv("SWARM_SECURITY_WORKER_ACMEPOOL_PASSWORD", "a-real-secret")
    assert SecuritySettings().passwords()["worker-acmepool"].get_secret_value() == "a-real-secret"  # type: ignore[union-attr]


def test_with_only_dedicated_pools_the_shared_worker_user_holds_no_tenants_data() -> None:
    worker = service_permissions(("acmepool:acme",))["worker"]
    assert not [s for s in worker.publish if s.startswith(("$KV.", "$O.")) or ".DIRECT.GET." in s]
    assert "$KV.swarm_outputs.acme.>" in service_permissions(("acmepool:acme",))["worker-acmepool"].publish
