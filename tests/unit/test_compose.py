"""compose/: the file validates, and each Swarm service's command, environment and ports match its settings class."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from swarm.natsserver import nats_server_binary
from swarm.security import SERVICE_USERS, SecuritySettings, render_nats_auth, user_permissions
from swarm.settings import ClickHouseSettings, NatsSettings
from swarm.stack import SERVICE_ORDER

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
HEALTH_NAMES = {service.module: service.name for service in SERVICE_ORDER}  # module -> health probe name


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def interpolate(value: object, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, resolved against .env.example."""

    def one(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if env.get(name):
            return env[name]
        assert kind != "?", f"{name} is required but not in .env.example"
        return default or ""

    return VARIABLE.sub(one, str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the `<<:` merge keys


def swarm_services(compose: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Compose services running `python -m services.<name>`, with that module."""
    found = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["python", "-m"] and command[2].startswith("services."):
            found[name] = (service, command[2])
    return found


def settings_class(module: str) -> type[BaseSettings]:
    """The one settings class a service module defines in its settings.py."""
    settings_module = importlib.import_module(f"{module}.settings")
    classes = [
        obj for obj in vars(settings_module).values()
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj.__module__ == settings_module.__name__
    ]  # fmt: skip
    assert len(classes) == 1, f"{module}.settings defines {classes}"
    return classes[0]


def env_fields(cls: type[BaseSettings]) -> dict[str, str]:
    """Every environment variable a settings class reads (nested settings classes with their own prefix)."""
    names = {}
    prefix = str(cls.model_config.get("env_prefix", ""))
    for field_name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            names.update(env_fields(annotation))
        else:
            names[f"{prefix}{field_name}".upper()] = cls.__name__
    return names


def test_docker_compose_validates_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    done = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_every_service_module_is_deployed_with_its_command_and_health_check(compose: dict[str, Any]) -> None:
    deployed = swarm_services(compose)
    assert {module for _, module in deployed.values()} == set(HEALTH_NAMES)
    for name, (service, module) in deployed.items():
        assert service["command"] == ["python", "-m", module], name
        assert service["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "swarm.health",
            HEALTH_NAMES[module],
        ], name
        assert importlib.import_module(f"{module}.__main__")  # the command's module exists


def test_every_swarm_variable_is_a_field_of_the_services_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_example()
    for name, (service, module) in swarm_services(compose).items():
        cls = settings_class(module)
        known = env_fields(cls) | env_fields(NatsSettings)  # the health check reads the shared NATS settings
        environment = service["environment"]
        swarm_vars = {
            key: interpolate(value, env) for key, value in environment.items() if key.startswith("SWARM_")
        }
        unknown = sorted(set(swarm_vars) - set(known))
        assert not unknown, f"{name}: {unknown} are not fields of {cls.__name__} (or NatsSettings)"
        # And the values validate: the service would start with this environment.
        for key in [k for k in os.environ if k.startswith("SWARM_")]:
            monkeypatch.delenv(key)
        for key, value in swarm_vars.items():
            monkeypatch.setenv(key, value)
        settings = cls()
        nats = getattr(settings, "nats", None) or NatsSettings()  # the gateway reads NatsSettings on its own
        assert nats.stream_replicas == 3, name
        assert nats.user == HEALTH_NAMES[module] and nats.user in SERVICE_USERS, name
        assert nats.password is not None and "change-me" in nats.password.get_secret_value()
        assert "change-me" not in repr(settings), "a password leaks into the settings' repr"
        hosts = [url.removeprefix("nats://") for url in nats.url.split(",")]
        assert hosts == [f"{node}:4222" for node in nats_nodes(compose)], name


def nats_nodes(compose: dict[str, Any]) -> list[str]:
    return sorted(
        name
        for name, service in compose["services"].items()
        if "nats-server" in (service.get("command") or [])
    )


def test_recorder_writes_to_the_clickhouse_server_as_its_own_user(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_example()
    environment = compose["services"]["recorder"]["environment"]
    for key, value in environment.items():
        if key.startswith("SWARM_CLICKHOUSE_"):
            monkeypatch.setenv(key, interpolate(value, env))
    clickhouse = ClickHouseSettings()
    assert (clickhouse.mode, clickhouse.host, clickhouse.port) == ("http", "clickhouse", 8123)
    assert clickhouse.user == "swarm_recorder"
    assert "8123" in " ".join(compose["services"]["clickhouse"]["healthcheck"]["test"])
    users = ET.parse(COMPOSE_DIR / "clickhouse/users.d/swarm-users.xml").getroot().find("users")
    assert users is not None
    recorder_grants = " ".join(q.text or "" for q in users.findall("swarm_recorder/grants/query"))
    assert "INSERT" in recorder_grants and "CREATE TABLE" in recorder_grants
    grafana_grants = [q.text for q in users.findall("grafana/grants/query")]
    assert grafana_grants == ["GRANT SELECT ON swarm.*"]
    for user in ("swarm_recorder", "grafana"):  # passwords from the environment, never the file
        password = users.find(f"{user}/password")
        assert password is not None and password.get("from_env") and not (password.text or "").strip()


def test_cluster_of_three_nats_nodes_each_config_valid(compose: dict[str, Any], tmp_path: Path) -> None:
    nodes = nats_nodes(compose)
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    config_dir = tmp_path / "nats"
    shutil.copytree(COMPOSE_DIR / "nats", config_dir)
    (config_dir / "auth").mkdir()
    users = [*user_permissions(SecuritySettings().tenant_ids()), "sys"]
    (config_dir / "auth/auth.conf").write_text(
        render_nats_auth({u: "x" for u in users}, ["default"], hashed=False)
    )
    for node in nodes:
        service = compose["services"][node]
        config = service["command"][-1].removeprefix("/etc/nats/")
        assert service["healthcheck"]["test"][-1] == "http://127.0.0.1:8222/healthz?js-enabled-only=true"
        text = (config_dir / config).read_text()
        assert f"server_name: {node}" in text and all(f"nats-route://{n}:6222" in text for n in nodes)
        done = subprocess.run(
            [nats_server_binary(), "-c", str(config_dir / config), "-t"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    common = (COMPOSE_DIR / "nats/common.conf").read_text()
    assert "listen: 0.0.0.0:4222" in common and "http: 0.0.0.0:8222" in common and "jetstream" in common


def test_gateway_reserves_four_gpus_after_the_engine_job(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    [device] = gateway["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", 4, ["gpu"])
    assert gateway["depends_on"]["gateway-engine"] == {"condition": "service_completed_successfully"}
    env = gateway["environment"]
    assert env["SWARM_GATEWAY_BACKEND"] == "trtllm" and env["SWARM_GATEWAY_TENSOR_PARALLEL_SIZE"] == "4"
    engine_job = services["gateway-engine"]
    assert engine_job["environment"]["TRTLLM_TP_SIZE"] == "4" and engine_job["restart"] == "no"
    assert engine_job["environment"]["TRTLLM_ENGINE_DIR"] == env["SWARM_GATEWAY_TRTLLM_MODEL"]
    assert (COMPOSE_DIR / "gateway/build-engine.sh").exists()


def test_replicas_health_checks_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = env_example()
    assert interpolate(services["dispatcher"]["deploy"]["replicas"], env) == "2"
    assert services["worker"]["deploy"]["replicas"] == "${SWARM_WORKER_REPLICAS:-4}"
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or "healthcheck" in service, f"{name} has no health check"
    grafana = services["grafana"]
    assert set(grafana["environment"]["GF_INSTALL_PLUGINS"].split(",")) == {
        "grafana-clickhouse-datasource", "marcusolsson-gantt-panel",
    }  # fmt: skip
    assert grafana["environment"]["CLICKHOUSE_USER"] == "grafana"
    assert grafana["healthcheck"]["test"][-1].endswith("/api/health")
    for name, (service, _) in swarm_services(compose).items():
        assert "ports" not in service, (
            f"{name} listens on nothing; only NATS, ClickHouse and Grafana publish ports"
        )


def test_env_example_lists_every_variable_and_no_secret_is_hard_coded(compose: dict[str, Any]) -> None:
    used = {match.group(1) for match in VARIABLE.finditer(COMPOSE_FILE.read_text())}
    listed = set(env_example())
    assert used - listed == set(), "variables missing from .env.example"
    assert listed - used == set(), "variables in .env.example the compose file never reads"
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "TOKEN", "SECRET")):
                assert str(value).startswith("${"), f"{name}: {key} is hard-coded"


def test_readme_configuration_table_lists_every_setting() -> None:
    from swarm.settings import StackSettings

    readme = (COMPOSE_DIR.parent / "README.md").read_text()
    table = readme[
        readme.index("## Configuration") : readme.index("\n## ", readme.index("## Configuration") + 5)
    ]
    classes = [settings_class(module) for module in HEALTH_NAMES]
    classes += [NatsSettings, ClickHouseSettings, StackSettings, SecuritySettings]
    missing = sorted(
        {name for cls in classes for name in env_fields(cls)} - set(re.findall(r"`(SWARM_\w+)`", table))
    )
    assert not missing, f"README.md, Configuration, lacks {missing}"
