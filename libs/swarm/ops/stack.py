"""The embedded local stack: a nats-server from the venv and every service as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors

from swarm.bus import Bus, ProvisioningConflict
from swarm.contracts import Subjects
from swarm.ops.natsserver import NatsServer, cluster_servers, local_nodes, node_status, start_cluster
from swarm.settings import NatsSettings, StackSettings


@dataclass(frozen=True)
class ServiceProcess:
    """A service the stack starts: its health name and its module."""

    name: str
    module: str


RECORDER = ServiceProcess("recorder", "services.recorder")
GATEWAY = ServiceProcess("gateway", "services.gateway")
PLANNER = ServiceProcess("planner", "services.planner")
DISPATCHER = ServiceProcess("dispatcher", "services.dispatcher")
WORKER = ServiceProcess("worker", "services.worker_pool")
AGGREGATOR = ServiceProcess("aggregator", "services.aggregator")
# Start order: consumers of events before producers, so nothing waits.
SERVICE_ORDER = (RECORDER, GATEWAY, PLANNER, DISPATCHER, WORKER, AGGREGATOR)


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why and where to look."""


class StackAlreadyRunning(StackError):
    """`swarm up` while a stack runs from the same home."""


NO_STACK = "no local stack is running: start one with `swarm up` (or give --nats-url of a running deployment)"
NATS_SERVER = "nats"  # the name `swarm restart` and `swarm status` give the stack's nats-server
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|CREDS", re.IGNORECASE)  # kept out of the state file


def _alive(pid: int, command: str | None = None) -> bool:
    """Whether `pid` runs (a zombie child is reaped, and is not); with `command`, whether it is that program
    (a dead service's pid may have been reused by another process)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if command is None:
        return True
    try:
        return command in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return not Path("/proc/self").exists()  # no procfs: trust the signal check


def _client_urls(ports: Iterable[int]) -> str:
    return ",".join(f"nats://127.0.0.1:{port}" for port in ports)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Stack:
    """Start, inspect and stop the local stack; its state file lives under `home`."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.home = self.settings.home.resolve()
        self.state_file = self.home / "stack.json"
        self.logs = self.home / "logs"

    @property
    def nats_url(self) -> str:
        """The client URL(s) of the stack's NATS, comma separated (as SWARM_NATS_URL takes them): the running
        stack's (its server may have picked its port), else the settings'."""
        running = self.state()
        if running is not None:
            return str(running["nats_url"])
        if not self.settings.nats_port:
            raise StackError("the stack's NATS port is picked by its server as it starts: start the stack first")
        return _client_urls(client for client, _, _ in self.node_ports())

    def node_ports(self) -> list[tuple[int, int, int]]:
        """(client, monitoring, route) ports of each NATS node: consecutive ports from the settings' ones."""
        s = self.settings
        return [(s.nats_port + i, s.nats_monitor_port + i, s.nats_cluster_port + i) for i in range(s.nats_cluster)]

    def state(self) -> dict[str, object] | None:
        """The running stack's pids and URLs, or None when none runs (a stale state file is ignored)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        pids = [*[n["pid"] for n in state.get("nats_nodes", [])], *[p["pid"] for p in state["services"]]]
        return state if any(_alive(pid) for pid in pids) else None

    def processes(self) -> list[dict[str, object]]:
        """Every process of the running stack (nats-server nodes first) with `alive`; [] when none runs."""
        state = self.state()
        if state is None:
            return []
        rows = []
        nodes = state["nats_nodes"]
        roles = node_status({n["name"]: int(n["monitor_port"]) for n in nodes}) if len(nodes) > 1 else {}  # type: ignore[arg-type]
        for node in nodes:  # type: ignore[attr-defined]
            entry = {"name": node["name"], "pid": node["pid"], "log": node["log"]}
            rows.append({**entry, "alive": _alive(int(node["pid"]), "nats-server"), **roles.get(node["name"], {})})
        for entry in state["services"]:  # type: ignore[attr-defined]
            rows.append({**entry, "alive": _alive(entry["pid"], entry["module"])})
        return rows

    def revive(self, on_step: Callable[[str], None] = lambda _: None, timeout_s: float = 120.0) -> list[str]:
        """Start again what died in the running stack (nats-server first); the names restarted, [] if none."""
        state = self._running_state()
        restarted = []
        for node in state["nats_nodes"]:
            if not _alive(int(node["pid"]), "nats-server"):
                on_step(node["name"])
                self._start_node(node)
                restarted.append(node["name"])
        for entry in state["services"]:
            if not _alive(entry["pid"], entry["module"]):
                entry["pid"] = self._spawn(entry, state["env"])
                restarted.append(entry["name"])
        self.state_file.write_text(json.dumps(state, indent=2))
        if restarted:
            asyncio.run(self._wait_healthy(state, on_step, timeout_s, only=set(restarted)))
        return restarted

    def restart(self, service: str, on_step: Callable[[str], None] = lambda _: None, timeout_s: float = 120.0) -> list[int]:
        """Stop every replica of `service` (SIGTERM: it drains) and start it again; the new pids."""
        state = self._running_state()
        nodes = [n["name"] for n in state["nats_nodes"]]
        if service == NATS_SERVER or service in nodes:
            for name in nodes if service == NATS_SERVER else [service]:  # one node at a time: a cluster keeps quorum
                on_step(name)
                self.stop_node(name)
                self.start_node(name)
            return [int(n["pid"]) for n in self._running_state()["nats_nodes"] if service in (NATS_SERVER, n["name"])]
        entries = [p for p in state["services"] if p["name"] == service]
        if not entries:
            services = dict.fromkeys(p["name"] for p in state["services"])
            names = ", ".join([NATS_SERVER, *(nodes if len(nodes) > 1 else []), *services])
            raise StackError(f"no service {service!r} in the stack: one of {names}")
        on_step(f"stopping {service}")
        _terminate([p["pid"] for p in entries], timeout_s=30)
        for entry in entries:
            entry["pid"] = self._spawn(entry, state["env"])
        self.state_file.write_text(json.dumps(state, indent=2))
        asyncio.run(self._wait_healthy(state, on_step, timeout_s, only={service}))
        return [int(p["pid"]) for p in entries]

    def up(self, on_step: Callable[[str], None] = lambda _: None, timeout_s: float = 120.0) -> dict[str, object]:
        """Start nats-server and every service; wait until each answers its health probe."""
        running = self.state()
        if running is not None:
            raise StackAlreadyRunning(f"the stack is already running ({running['nats_url']}); `swarm down` stops it")
        for port in [p for ports in self.node_ports() for p in ports[: 3 if self.settings.nats_cluster > 1 else 2]]:
            if port and not _port_free(port):  # 0: the server picks a free one as it listens
                raise StackError(
                    f"port {port} is in use: set SWARM_NATS_PORT / SWARM_NATS_MONITOR_PORT / SWARM_NATS_CLUSTER_PORT"
                )
        self.logs.mkdir(parents=True, exist_ok=True)
        on_step("nats-server" if self.settings.nats_cluster == 1 else f"{self.settings.nats_cluster} nats-server nodes")
        nats_nodes = self._start_nats_nodes()
        nats_url = _client_urls(int(node["port"]) for node in nats_nodes)  # type: ignore[call-overload]
        # Streams, buckets (and in a cluster their leaders) before the services: six processes creating
        # replicated streams at once keep the Raft groups electing, and a service's first API call timed out;
        # and a store another version made is refused here, once, in words, not by every service's traceback.
        on_step("streams" if self.settings.nats_cluster == 1 else "replicated streams")
        try:
            asyncio.run(_provision(NatsSettings(url=nats_url, stream_replicas=min(3, self.settings.nats_cluster))))
        except (nats.errors.Error, TimeoutError, ProvisioningConflict) as exc:
            _terminate([int(n["pid"]) for n in nats_nodes], timeout_s=10)  # type: ignore[call-overload]
            if isinstance(exc, ProvisioningConflict):
                raise StackError(
                    f"the NATS store {self.home / 'nats'} was made by another version of Swarm ({exc}). It keeps "
                    f"the stack's runs across restarts, so `swarm up` does not change it: delete {self.home / 'nats'} "
                    "to start afresh (the runs it holds are lost there; ClickHouse keeps their history)"
                ) from exc
            raise StackError(f"NATS did not take the streams ({exc}): see {self.logs}") from exc
        # The services' settings as they are now, kept in the state file: a service restarted later
        # (`swarm up`, `swarm restart`) from another shell gets the same ones. Secrets stay out of the file.
        inherited = {k: v for k, v in os.environ.items() if k.startswith("SWARM_") and not SECRET_NAME.search(k)}
        env = {
            **inherited,
            "SWARM_NATS_URL": nats_url,
            "SWARM_NATS_STREAM_REPLICAS": str(min(3, self.settings.nats_cluster)),
            "SWARM_CLICKHOUSE_PATH": str(self.home / "clickhouse"),
            "SWARM_GATEWAY_BACKEND": self.settings.gateway_backend,
        }
        replicas = {WORKER.name: self.settings.workers, DISPATCHER.name: self.settings.dispatchers}
        services = []
        for service in SERVICE_ORDER:
            count = replicas.get(service.name, 1)
            for replica in range(count):
                log_file = self.logs / (f"{service.name}-{replica}.log" if count > 1 else f"{service.name}.log")
                entry = {"name": service.name, "module": service.module, "log": str(log_file)}
                services.append({**entry, "pid": self._spawn(entry, env)})
        state = {
            "nats_url": nats_url, "nats_nodes": nats_nodes, "services": services,
            "home": str(self.home), "env": env,
        }  # fmt: skip
        self.state_file.write_text(json.dumps(state, indent=2))
        try:
            asyncio.run(self._wait_healthy(state, on_step, timeout_s))
        except StackError:
            self.down()
            raise
        return state

    @staticmethod
    def _spawn(entry: dict[str, str], env: dict[str, str]) -> int:
        with open(entry["log"], "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", entry["module"]], env={**os.environ, **env}, stdout=out,
                stderr=subprocess.STDOUT, process_group=0, cwd=os.getcwd(),
            )  # fmt: skip  # the caller's session, as the NATS server's (see NatsServer.launch)
        return process.pid

    def _running_state(self) -> dict:  # type: ignore[type-arg]
        state = self.state()
        if state is None:
            raise StackError(NO_STACK)
        return state

    def kill(self, service: str, replica: int = 0) -> int:
        """SIGKILL one service process, as a crash would (for recovery tests); returns its pid."""
        state = self._running_state()
        entry = [p for p in state["services"] if p["name"] == service][replica]
        os.kill(entry["pid"], signal.SIGKILL)
        _reap([entry["pid"]])
        return int(entry["pid"])

    def respawn(self, service: str, replica: int = 0) -> int:
        """Start one service process again (after `kill`); returns the new pid."""
        state = self._running_state()
        entry = [p for p in state["services"] if p["name"] == service][replica]
        entry["pid"] = self._spawn(entry, state["env"])
        self.state_file.write_text(json.dumps(state, indent=2))
        return int(entry["pid"])

    def restart_nats(self, down_s: float = 1.0, crash: bool = False) -> None:
        """Stop every nats-server node (SIGTERM, or SIGKILL with `crash`) and start them again, same ports and stores."""
        nodes = [n["name"] for n in self._running_state()["nats_nodes"]]
        for name in nodes:
            self.stop_node(name, crash=crash)
        time.sleep(down_s)
        state = json.loads(self.state_file.read_text())
        if len(nodes) == 1:
            self._start_node(state["nats_nodes"][0])
        else:
            servers = [self._node_server(n) for n in state["nats_nodes"]]
            start_cluster(servers)
            for node, server in zip(state["nats_nodes"], servers, strict=True):
                node["pid"] = server.process.pid  # type: ignore[union-attr]
        self.state_file.write_text(json.dumps(state, indent=2))

    def stop_node(self, name: str, crash: bool = False) -> int:
        """Stop one nats-server node: SIGTERM (it shuts down cleanly) or, with `crash`, SIGKILL; its pid."""
        state = json.loads(self.state_file.read_text())
        pid = int(next(n for n in state["nats_nodes"] if n["name"] == name)["pid"])
        if crash:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap([pid])
        else:
            _terminate([pid], timeout_s=20)
        return pid

    def start_node(self, name: str) -> int:
        """Start one stopped nats-server node again on its ports and store; waits until it is healthy (a cluster
        node: until it has caught up with the meta leader and its streams). Its new pid."""
        state = self._running_state()
        node = next(n for n in state["nats_nodes"] if n["name"] == name)
        self._start_node(node)
        self.state_file.write_text(json.dumps(state, indent=2))
        return int(node["pid"])

    def _start_nats_nodes(self) -> list[dict[str, object]]:
        """Start the stack's nats-server (or its cluster's nodes); their state entries."""
        if self.settings.nats_cluster == 1:
            node = {
                "name": NATS_SERVER, "port": self.settings.nats_port, "monitor_port": self.settings.nats_monitor_port,
                "store": str(self.home / "nats"), "config": None, "log": str(self.logs / "nats.log"),
            }  # fmt: skip
            self._start_node(node)
            return [node]
        servers = cluster_servers(self.home / "nats", local_nodes(self.home / "nats", self.node_ports()), self.logs)
        try:
            start_cluster(servers)
        except (RuntimeError, TimeoutError) as exc:
            _terminate([s.process.pid for s in servers if s.process is not None], timeout_s=10)
            raise StackError(f"the NATS cluster did not start ({exc}): see {self.logs}") from exc
        return [
            {"name": s.name, "port": s.port, "monitor_port": s.monitor_port, "store": str(s.store_dir),
             "config": str(s.config_file), "log": str(s.log_file), "pid": s.process.pid}  # type: ignore[union-attr]
            for s in servers
        ]  # fmt: skip

    @staticmethod
    def _node_server(node: dict) -> NatsServer:  # type: ignore[type-arg]
        return NatsServer(
            store_dir=Path(node["store"]), port=int(node["port"]), monitor_port=int(node["monitor_port"]),
            log_file=Path(node["log"]), config_file=Path(node["config"]) if node["config"] else None,
            name=str(node["name"]),
        )  # fmt: skip

    def _start_node(self, node: dict) -> None:  # type: ignore[type-arg]
        """Start one node on its own ports and store, whatever the environment says; its pid goes into `node`."""
        server = self._node_server(node).start(timeout_s=60)
        assert server.process is not None
        node["pid"] = server.process.pid
        node["port"], node["monitor_port"] = server.port, server.monitor_port  # picked by the server when 0

    async def _wait_healthy(
        self, state: dict, on_step: Callable[[str], None], timeout_s: float, only: set[str] | None = None,  # type: ignore[type-arg]
    ) -> None:  # fmt: skip
        nc = await nats.connect(str(state["nats_url"]).split(","))
        deadline = time.monotonic() + timeout_s
        try:
            for service in SERVICE_ORDER:
                if only is not None and service.name not in only:
                    continue
                on_step(service.name)
                while True:
                    dead = [p for p in state["services"] if p["name"] == service.name and not _alive(p["pid"])]
                    if dead:
                        raise StackError(
                            f"{service.name} exited during start-up; its log {dead[0]['log']} ends with:\n"
                            + _tail(Path(dead[0]["log"]))
                        )
                    try:
                        await nc.request(Subjects.health(service.name), b"", timeout=0.5)
                        break
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        if time.monotonic() > deadline:
                            raise StackError(f"{service.name} not healthy after {timeout_s:.0f}s: see {self.logs}") from None
                        await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def down(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM the services (they drain), then nats-server; SIGKILL what lingers. False if none ran."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return False
        service_pids = [p["pid"] for p in reversed(state["services"])]
        _terminate(service_pids, timeout_s)
        _terminate([int(n["pid"]) for n in state.get("nats_nodes", [])], timeout_s)
        self.state_file.unlink(missing_ok=True)
        return True


async def _provision(settings: NatsSettings) -> None:
    bus = await Bus.connect(settings, "swarm-up")
    try:
        await bus.provision()
    finally:
        await bus.close()


def _terminate(pids: list[int], timeout_s: float) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    _reap(pids)


def _reap(pids: list[int]) -> None:
    """Collect exited children of this process, so they do not linger as zombies (alive to os.kill)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
