"""compose/: the file validates, and each Swarm service's command, environment and ports match its settings class."""

from __future__ import annotations

import copy
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

from services.gateway.settings import GatewaySettings
from swarm.ops import natsserver
from swarm.ops.natsserver import nats_server_binary
from swarm.ops.security import SERVICE_USERS, SecuritySettings, render_nats_auth, user_permissions
from swarm.ops.stack import SERVICE_ORDER
from swarm.settings import ClickHouseSettings, NatsSettings

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENGINE_FILE = COMPOSE_DIR / "docker-compose.engine.yml"  # the prebuilt-engine option, added with a second -f
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
HEALTH_NAMES = {service.module: service.name for service in SERVICE_ORDER}  # module -> health probe name


def env_example(placeholders: bool = False) -> dict[str, str]:
    """.env.example's variables; its `change-me-*` secrets replaced, as an operator does (start-up refuses them)."""
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value if placeholders else value.replace("change-me-", "set-") for key, value in pairs}


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
    """Compose services running `python -m services.<name>`, with that module (one-shot jobs aside)."""
    found = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["python", "-m"] and command[2].startswith("services.") and service.get("restart") != "no":
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


@pytest.mark.parametrize("files", [[COMPOSE_FILE], [COMPOSE_FILE, ENGINE_FILE]], ids=["pytorch", "engine"])
def test_docker_compose_validates_the_file(files: list[Path]) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    done = subprocess.run(
        [binary, *(f"--file={file}" for file in files), "--env-file", str(ENV_EXAMPLE), "config", "-q"],
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
        assert nats.password is not None and "set-" in nats.password.get_secret_value()  # from .env
        assert "set-" not in repr(settings), "a password leaks into the settings' repr"
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
    assert "INSERT" in recorder_grants and "CREATE" not in recorder_grants  # DDL is swarm_migrator's
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
    # The certificates compose mounts as secrets, from `make certs`' script.
    subprocess.run([str(COMPOSE_DIR / "tls/make-certs.sh"), str(tmp_path / "certs")], check=True, capture_output=True)
    tls = (config_dir / "tls.conf").read_text()
    for secret, file in (("nats-server-cert", "server.pem"), ("nats-server-key", "server-key.pem"), ("nats-ca", "ca.pem")):
        tls = tls.replace(f"/run/secrets/{secret}", str(tmp_path / "certs" / file))
    (config_dir / "tls.conf").write_text(tls)
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
        assert "listen: 0.0.0.0:4222" in text and "http: 0.0.0.0:8222" in text
    common = (COMPOSE_DIR / "nats/common.conf").read_text()
    assert "jetstream" in common and 'include "auth/auth.conf"' in common


def test_compose_nats_configs_are_generated() -> None:
    """compose/nats/*.conf is what swarm.ops.natsserver generates, the same code the local cluster runs."""
    assert natsserver.compose_drift() == [], "run `python -m swarm.ops.natsserver`"


def test_drift_check_reports_an_edited_config(tmp_path: Path) -> None:
    natsserver.write_configs(tmp_path, natsserver.cluster_configs(natsserver.compose_nodes(), "auth/auth.conf", tls=True))
    assert natsserver.compose_drift(tmp_path) == []
    edited = tmp_path / "nats-2.conf"
    edited.write_text(edited.read_text().replace("nats-route://nats-3:6222", ""))
    assert natsserver.compose_drift(tmp_path) == ["nats-2.conf"]


def test_local_cluster_differs_from_compose_only_in_addresses_and_auth(tmp_path: Path) -> None:
    compose_files = natsserver.cluster_configs(natsserver.compose_nodes(), "auth/auth.conf")
    local = natsserver.local_nodes(tmp_path, [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    local_files = natsserver.cluster_configs(local, None)
    assert local_files.keys() == compose_files.keys()
    shared = natsserver.jetstream_block()
    assert shared in local_files["common.conf"] and shared in compose_files["common.conf"]
    assert 'include "' not in local_files["common.conf"]
    assert all(f"nats-route://127.0.0.1:{port}" in local_files["nats-2.conf"] for port in (3, 6, 9))


def with_engine_option(compose: dict[str, Any]) -> dict[str, Any]:
    """The services with compose/docker-compose.engine.yml merged in, as compose merges an override file."""
    override = yaml.safe_load(ENGINE_FILE.read_text())
    services = copy.deepcopy(compose["services"])
    for name, extra in override["services"].items():
        service = services.setdefault(name, {})
        for key, value in extra.items():
            if isinstance(value, dict):
                service[key] = {**service.get(key, {}), **value}
            elif key == "volumes":
                service[key] = [*service.get(key, []), *value]
            else:
                service[key] = value
    return services


def gateway_settings(environment: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    """The gateway's settings as the container would read them from this environment."""
    for key in [k for k in os.environ if k.startswith("SWARM_")]:
        monkeypatch.delenv(key)
    env = env_example()
    for key, value in environment.items():
        if key.startswith("SWARM_GATEWAY_"):
            monkeypatch.setenv(key, interpolate(value, env))
    return GatewaySettings()


def test_model_fetch_job_downloads_the_checkpoint_once_with_the_token_from_env(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    fetch = services["gateway-model"]
    assert fetch["restart"] == "no" and fetch["command"] == ["sh", "/opt/swarm/fetch-model.sh"]
    assert "deploy" not in fetch, "downloading needs no GPU"
    env = fetch["environment"]
    assert env["HF_TOKEN"] == "${HF_TOKEN:-}" and "HF_TOKEN" in env_example()
    assert env["TRTLLM_HF_MODEL"].startswith("${TRTLLM_HF_MODEL")
    assert interpolate(env["TRTLLM_MODEL_DIR"], env_example()) == "/models/meta-llama/Llama-3.1-8B-Instruct"
    assert "models:/models" in fetch["volumes"], "the job writes into the models volume"
    assert "./gateway/fetch-model.sh:/opt/swarm/fetch-model.sh:ro" in fetch["volumes"]
    script = (COMPOSE_DIR / "gateway/fetch-model.sh").read_text()
    assert 'download "${TRTLLM_HF_MODEL}"' in script and '--local-dir "$model_dir"' in script
    assert "huggingface-cli" in script and "--token" not in script  # HF_TOKEN from the environment


def test_gateway_serves_the_local_checkpoint_offline_after_the_fetch_job(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    gateway = services["gateway"]
    [device] = gateway["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["count"], device["capabilities"]) == ("nvidia", 4, ["gpu"])
    assert gateway["depends_on"]["gateway-model"] == {"condition": "service_completed_successfully"}
    assert "gateway-engine" not in services, "the engine build is the option, not the default"
    env = gateway["environment"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert "HF_TOKEN" not in env, "the gateway reads a local directory: it needs no token"
    assert gateway["volumes"] == ["models:/models:ro"]
    settings = gateway_settings(env, monkeypatch)
    assert (settings.backend, settings.trtllm_runtime, settings.tensor_parallel_size) == ("trtllm", "pytorch", 4)
    fetched_into = interpolate(services["gateway-model"]["environment"]["TRTLLM_MODEL_DIR"], env_example())
    assert settings.trtllm_model == fetched_into
    assert settings.trtllm_tokenizer == "" and settings.trtllm_max_num_tokens >= settings.trtllm_max_seq_len


def test_engine_option_builds_from_the_fetched_checkpoint_then_the_gateway_loads_it(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = with_engine_option(compose)
    build = services["gateway-engine"]
    assert build["restart"] == "no" and build["depends_on"] == {
        "gateway-model": {"condition": "service_completed_successfully"}
    }
    env = env_example()
    model_dir = interpolate(services["gateway-model"]["environment"]["TRTLLM_MODEL_DIR"], env)
    build_env = {key: interpolate(value, env) for key, value in build["environment"].items()}
    assert build_env["TRTLLM_MODEL_DIR"] == model_dir and build_env["TRTLLM_TP_SIZE"] == "4"
    assert build_env["HF_HUB_OFFLINE"] == "1" and "models:/models:ro" in build["volumes"]
    script = (COMPOSE_DIR / "gateway/build-engine.sh").read_text()
    assert '--model_dir "$model_dir"' in script and "TRTLLM_HF_MODEL" not in script  # a local directory only
    assert '--max_num_tokens "${TRTLLM_MAX_NUM_TOKENS' in script
    assert "--use_paged_context_fmha enable" in script  # what chunked prefill needs in an engine

    gateway = services["gateway"]
    assert gateway["depends_on"]["gateway-engine"] == {"condition": "service_completed_successfully"}
    assert gateway["depends_on"]["gateway-model"] == {"condition": "service_completed_successfully"}
    assert sorted(gateway["volumes"]) == ["models:/models:ro", "trtllm-engines:/engines:ro"]
    settings = gateway_settings(gateway["environment"], monkeypatch)
    assert settings.trtllm_runtime == "tensorrt" and settings.trtllm_model == build_env["TRTLLM_ENGINE_DIR"]
    assert settings.trtllm_tokenizer == model_dir and settings.trtllm_guided_decoding_backend == "xgrammar"
    assert gateway["environment"]["HF_HUB_OFFLINE"] == "1"
    for limit in ("MAX_SEQ_LEN", "MAX_NUM_TOKENS", "MAX_BATCH_SIZE"):  # built with the limits the gateway uses
        gateway_limit = interpolate(gateway["environment"][f"SWARM_GATEWAY_TRTLLM_{limit}"], env)
        assert build_env[f"TRTLLM_{limit}"] == gateway_limit


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
    texts = COMPOSE_FILE.read_text() + ENGINE_FILE.read_text()
    used = {match.group(1) for match in VARIABLE.finditer(texts)}
    listed = set(env_example())
    assert used - listed == set(), "variables missing from .env.example"
    assert listed - used == set(), "variables in .env.example the compose file never reads"
    for name, service in with_engine_option(compose).items():
        for key, value in (service.get("environment") or {}).items():
            if {"PASSWORD", "TOKEN", "SECRET"} & set(key.split("_")):  # not TOKENIZER, MAX_NUM_TOKENS
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


# A FAKE huggingface-cli: writes what a checkpoint download leaves in --local-dir and logs its arguments.
FAKE_HF_CLI = """#!/bin/sh
echo "$@" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do [ "$1" = --local-dir ] && dir="$2"; shift; done
printf '{}' > "$dir/config.json"; printf '{}' > "$dir/tokenizer_config.json"
printf 'weights' > "$dir/model.safetensors"
"""


def run_job(script: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """One of compose/gateway's job scripts under sh, with FAKE tools first on PATH."""
    return subprocess.run(
        ["sh", str(COMPOSE_DIR / "gateway" / script)], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "calls.log"), **env},
    )  # fmt: skip


def test_fetch_job_downloads_once_and_refuses_to_mix_two_models(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    cli = tmp_path / "bin" / "huggingface-cli"
    cli.write_text(FAKE_HF_CLI)
    cli.chmod(0o755)
    model_dir = tmp_path / "models" / "checkpoint"
    env = {"TRTLLM_MODEL_DIR": str(model_dir), "TRTLLM_HF_MODEL": "org/Model-8B", "HF_TOKEN": "hf_secret"}

    done = run_job("fetch-model.sh", env, tmp_path)
    assert done.returncode == 0, done.stderr
    (call,) = (tmp_path / "calls.log").read_text().splitlines()
    assert call.startswith(f"download org/Model-8B --revision main --local-dir {model_dir}")
    assert "hf_secret" not in call  # the token stays in the environment
    assert (model_dir / ".swarm-fetched").read_text().strip() == "org/Model-8B@main"

    again = run_job("fetch-model.sh", env, tmp_path)  # a restart: no network needed, nothing downloaded
    assert again.returncode == 0 and "nothing to fetch" in again.stdout
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 1

    other = run_job("fetch-model.sh", {**env, "TRTLLM_HF_REVISION": "0e9e39f"}, tmp_path)  # same directory
    assert other.returncode == 1 and "delete that directory" in other.stderr


def test_engine_job_refuses_to_build_without_a_fetched_checkpoint(tmp_path: Path) -> None:
    env = {
        "TRTLLM_MODEL_DIR": str(tmp_path / "models" / "checkpoint"),
        "TRTLLM_ENGINE_DIR": str(tmp_path / "e"),
        "TRTLLM_CONVERT_SCRIPT": "/nonexistent/convert_checkpoint.py",
    }
    done = run_job("build-engine.sh", env, tmp_path)
    assert done.returncode == 1 and "run the gateway-model job first" in done.stderr
    assert not (tmp_path / "e").exists()
