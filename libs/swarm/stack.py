"""The embedded local stack: a nats-server from the venv and every service as its own process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors

from swarm.contracts import Subjects
from swarm.natsserver import NatsServer
from swarm.settings import StackSettings


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        return f"nats://127.0.0.1:{self.settings.nats_port}"

    def state(self) -> dict[str, object] | None:
        """The running stack's pids and URLs, or None when none runs (a stale state file is ignored)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        pids = [state["nats_pid"], *[p["pid"] for p in state["services"]]]
        return state if any(_alive(pid) for pid in pids) else None

    def up(self, on_step: Callable[[str], None] = lambda _: None, timeout_s: float = 120.0) -> dict[str, object]:
        """Start nats-server and every service; wait until each answers its health probe."""
        running = self.state()
        if running is not None:
            raise StackAlreadyRunning(f"the stack is already running ({running['nats_url']}); `swarm down` stops it")
        for port in (self.settings.nats_port, self.settings.nats_monitor_port):
            if not _port_free(port):
                raise StackError(f"port {port} is in use: set SWARM_NATS_PORT / SWARM_NATS_MONITOR_PORT")
        self.logs.mkdir(parents=True, exist_ok=True)
        on_step("nats-server")
        server = NatsServer(
            store_dir=self.home / "nats", port=self.settings.nats_port,
            monitor_port=self.settings.nats_monitor_port, log_file=self.logs / "nats.log",
        ).start()  # fmt: skip
        assert server.process is not None
        env = {
            "SWARM_NATS_URL": server.url,
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
            "nats_url": server.url, "nats_pid": server.process.pid, "services": services,
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
                stderr=subprocess.STDOUT, start_new_session=True, cwd=os.getcwd(),
            )  # fmt: skip
        return process.pid

    def _running_state(self) -> dict:  # type: ignore[type-arg]
        state = self.state()
        if state is None:
            raise StackError("no local stack is running")
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
        """Stop nats-server (SIGTERM, or SIGKILL with `crash`) and start it again on the same port and store."""
        state = self._running_state()
        if crash:
            os.kill(state["nats_pid"], signal.SIGKILL)
            _reap([state["nats_pid"]])
        else:
            _terminate([state["nats_pid"]], timeout_s=20)
        time.sleep(down_s)
        server = NatsServer(
            store_dir=self.home / "nats", port=self.settings.nats_port,
            monitor_port=self.settings.nats_monitor_port, log_file=self.logs / "nats.log",
        ).start()  # fmt: skip
        assert server.process is not None
        state["nats_pid"] = server.process.pid
        self.state_file.write_text(json.dumps(state, indent=2))

    async def _wait_healthy(self, state: dict, on_step: Callable[[str], None], timeout_s: float) -> None:  # type: ignore[type-arg]
        nc = await nats.connect(state["nats_url"])
        deadline = time.monotonic() + timeout_s
        try:
            for service in SERVICE_ORDER:
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
        _terminate([state["nats_pid"]], timeout_s)
        self.state_file.unlink(missing_ok=True)
        return True


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
