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

    def processes(self) -> list[dict[str, object]]:
        """Every process of the running stack (nats-server first) with `alive`; [] when none runs."""
        state = self.state()
        if state is None:
            return []
        nats_entry = {"name": NATS_SERVER, "pid": state["nats_pid"], "log": str(self.logs / "nats.log")}
        rows = [{**nats_entry, "alive": _alive(int(state["nats_pid"]), "nats-server")}]
        for entry in state["services"]:  # type: ignore[attr-defined]
            rows.append({**entry, "alive": _alive(entry["pid"], entry["module"])})
        return rows

    def revive(self, on_step: Callable[[str], None] = lambda _: None, timeout_s: float = 120.0) -> list[str]:
        """Start again what died in the running stack (nats-server first); the names restarted, [] if none."""
        state = self._running_state()
        restarted = []
        if not _alive(int(state["nats_pid"]), "nats-server"):
            on_step(NATS_SERVER)
            self._start_nats(state)
            restarted.append(NATS_SERVER)
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
        if service == NATS_SERVER:
            on_step(NATS_SERVER)
            self.restart_nats(down_s=0.0)
            return [int(self._running_state()["nats_pid"])]
        entries = [p for p in state["services"] if p["name"] == service]
        if not entries:
            names = ", ".join([NATS_SERVER, *dict.fromkeys(p["name"] for p in state["services"])])
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
        # The services' settings as they are now, kept in the state file: a service restarted later
        # (`swarm up`, `swarm restart`) from another shell gets the same ones. Secrets stay out of the file.
        inherited = {k: v for k, v in os.environ.items() if k.startswith("SWARM_") and not SECRET_NAME.search(k)}
        env = {
            **inherited,
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
            "nats_url": server.url, "nats_pid": server.process.pid, "nats_monitor_port": self.settings.nats_monitor_port,
            "services": services,
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
        """Stop nats-server (SIGTERM, or SIGKILL with `crash`) and start it again on the same port and store."""
        state = self._running_state()
        if crash:
            os.kill(state["nats_pid"], signal.SIGKILL)
            _reap([state["nats_pid"]])
        else:
            _terminate([state["nats_pid"]], timeout_s=20)
        time.sleep(down_s)
        self._start_nats(state)
        self.state_file.write_text(json.dumps(state, indent=2))

    def _start_nats(self, state: dict) -> None:  # type: ignore[type-arg]
        """Start nats-server on the stack's port and store; its pid goes into `state`."""
        port = int(str(state["nats_url"]).rsplit(":", 1)[-1])  # the stack's own ports, whatever the environment says
        server = NatsServer(
            store_dir=Path(state["home"]) / "nats", port=port,
            monitor_port=int(state.get("nats_monitor_port", self.settings.nats_monitor_port)),
            log_file=Path(state["home"]) / "logs" / "nats.log",
        ).start()  # fmt: skip
        assert server.process is not None
        state["nats_pid"] = server.process.pid

    async def _wait_healthy(
        self, state: dict, on_step: Callable[[str], None], timeout_s: float, only: set[str] | None = None,  # type: ignore[type-arg]
    ) -> None:  # fmt: skip
        nc = await nats.connect(state["nats_url"])
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
