"""The terminal experience as a user has it: `swarm top` in a real terminal (tmux) beside a 300-agent load test,
and the stack commands (`up` restarting the dead, `status` telling alive from dead, `restart SERVICE`, `down`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.ops.natsserver import free_port_block
from swarm.ops.stack import Stack
from swarm.settings import StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Room for a 300-wide layer of simulated steps (what `swarm loadtest` gives its own embedded stack).
SERVICE_ENV = {
    "SWARM_GATEWAY_SIM_LATENCY_SCALE": "1", "SWARM_WORKER_CONCURRENCY": "160", "SWARM_GATEWAY_MAX_QUEUE": "600",
}  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("swarm-terminal")
    settings = StackSettings(home=home, nats_port=0, nats_monitor_port=0, gateway_backend="sim")
    saved = {key: os.environ.get(key) for key in SERVICE_ENV}
    os.environ.update(SERVICE_ENV)
    running = Stack(settings)
    try:
        running.up(timeout_s=180)
        yield running
    finally:
        running.down()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def cli_env(stack: Stack) -> dict[str, str]:
    """The environment a user of this stack's home has (`swarm` finds the stack from SWARM_HOME)."""
    return {
        **os.environ, "SWARM_HOME": str(stack.home), "SWARM_NATS_PORT": str(stack.settings.nats_port),
        "SWARM_NATS_MONITOR_PORT": str(stack.settings.nats_monitor_port), "COLUMNS": "120",
    }  # fmt: skip


def swarm(stack: Stack, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm.ops.cli", *args], env=cli_env(stack), capture_output=True, text=True,
        timeout=timeout_s, cwd=stack.home,
    )  # fmt: skip


class Tmux:
    """A tmux server of its own (its own socket), one window of a fixed size."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name]

    def start(self, command: str, env: dict[str, str], width: int = 120, height: int = 45) -> None:
        subprocess.run([*self.base, "new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), command],
                       env=env, check=True)  # fmt: skip

    def capture(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "top", *keys], check=True)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by `make install` (Debian's tmux)")
def test_top_in_a_terminal_beside_a_300_agent_loadtest(stack: Stack, tmp_path: Path) -> None:
    load_log = (tmp_path / "loadtest.log").open("w")
    loadtest = subprocess.Popen(
        [sys.executable, "-m", "swarm.ops.cli", "loadtest", "--scenario", "fanout-300", "--latency-scale", "4",
         "--no-floor", "--nats-url", stack.nats_url, "--timeout-s", "300"],
        env=cli_env(stack), stdout=load_log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    tmux = Tmux(f"swarm-top-{os.getpid()}")
    exit_file = tmp_path / "top.exit"
    command = f"{shlex.quote(sys.executable)} -m swarm.ops.cli top --nats-url {stack.nats_url}; echo $? > {exit_file}"
    try:
        tmux.start(command, cli_env(stack))
        run_line = re.compile(r"(lt-fanout-300-\d{8}-\d{6}-[0-9a-f]{6})\s+running\s.*?(\d+)/301")
        slots = re.compile(r"workers\s+\d+ in flight of 320 slots")  # the health probes answered

        screens: list[str] = []

        def ready() -> bool:
            screens.append(tmux.capture())
            return bool(run_line.search(screens[-1]) and "analyst" in screens[-1] and slots.search(screens[-1]))

        wait_for(ready, 120, "the run and the services in top")
        first = screens[-1]
        match = run_line.search(first)
        assert match is not None, first
        run_id = match.group(1)
        assert f"Agents of {run_id} (300 agents)" in first, first
        agent_lines = [line for line in first.splitlines() if re.match(r"\s*a\d+\s+analyst\s+[01]/1\s", line)]
        assert len(agent_lines) >= 5, first
        assert "more agents" in first  # 300 agents do not fit: the rest are counted
        assert "DEAD" not in first and "worker x2" in first, first

        def moved() -> bool:
            now = tmux.capture()
            later = run_line.search(now)
            return later is not None and later.group(2) != match.group(2)

        wait_for(moved, 60, "the run's progress to change on screen")
        assert tmux.capture() != first
        # Agents' turns come from the progress events' finished steps: done agents get counted.
        done = re.compile(r"more agents \(\d+ at work, \d+ waiting, ([1-9]\d*) done in all\)")
        wait_for(lambda: done.search(tmux.capture()), 60, "agents with their turn done")
        tmux.keys("q")
        wait_for(exit_file.exists, 20, "top to quit on q")
        assert exit_file.read_text().strip() == "0"
        # Done watching: cancel the run rather than let the next test share the machine with it.
        cancel = swarm(stack, "cancel", run_id, "--nats-url", stack.nats_url)
        assert cancel.returncode == 0 or "already over" in cancel.stderr, cancel.stderr
        loadtest.wait(timeout=120)
        # The same run, for scripts.
        listed = json.loads(swarm(stack, "runs", "--json", "--nats-url", stack.nats_url).stdout)
        assert run_id in [r["run_id"] for r in listed]
        stats = json.loads(swarm(stack, "stats", "--json", "--nats-url", stack.nats_url).stdout)
        assert stats["runs_count"] >= 1 and "runs_per_window_minute" in stats and "runs_per_minute" not in stats
        report = swarm(stack, "report", run_id, "--json", "--nats-url", stack.nats_url)
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["run_id"] == run_id
    finally:
        tmux.kill()
        if loadtest.poll() is None:
            loadtest.send_signal(signal.SIGINT)
            loadtest.wait(timeout=60)
        load_log.close()


def test_stack_commands_tell_alive_from_dead_and_restart(stack: Stack) -> None:
    status = swarm(stack, "status", "--json")
    assert status.returncode == 0, status.stderr
    processes = json.loads(status.stdout)["processes"]
    assert all(p["alive"] for p in processes) and {p["name"] for p in processes} >= {"nats", "worker", "recorder"}

    killed = stack.kill("worker", replica=1)
    status = swarm(stack, "status")
    assert status.returncode == 1
    assert re.search(rf"worker\s+{killed}\s+dead", status.stdout), status.stdout
    assert "dead: worker" in status.stderr and "`swarm up` restarts" in status.stderr

    up = swarm(stack, "up")
    assert up.returncode == 0, up.stderr
    assert "Restarted what had died: worker" in up.stdout
    processes = json.loads(swarm(stack, "status", "--json").stdout)["processes"]
    workers = [p for p in processes if p["name"] == "worker"]
    assert all(p["alive"] for p in processes) and killed not in [p["pid"] for p in workers]

    again = swarm(stack, "up")
    assert again.returncode == 0 and "already running, every process alive" in again.stdout

    dispatcher_pid = next(p["pid"] for p in processes if p["name"] == "dispatcher")
    restarted = swarm(stack, "restart", "dispatcher")
    assert restarted.returncode == 0, restarted.stderr
    processes = json.loads(swarm(stack, "status", "--json").stdout)["processes"]
    dispatcher = next(p for p in processes if p["name"] == "dispatcher")
    assert dispatcher["alive"] and dispatcher["pid"] != dispatcher_pid

    unknown = swarm(stack, "restart", "nosuchservice")
    assert unknown.returncode == 1 and "no service 'nosuchservice'" in unknown.stderr

    cancel = swarm(stack, "cancel", "nosuchrun", "--nats-url", stack.nats_url)
    assert cancel.returncode == 1 and "no run nosuchrun" in cancel.stderr

    # Last (the stack is module-wide): `swarm down` stops every process, and says so when there is none.
    pids = [p["pid"] for p in json.loads(swarm(stack, "status", "--json").stdout)["processes"]]
    down = swarm(stack, "down")
    assert down.returncode == 0 and "Swarm is down." in down.stdout, down.stdout + down.stderr
    assert not [pid for pid in pids if _alive(pid)]
    after = swarm(stack, "status")
    assert after.returncode == 1 and "swarm up" in after.stderr
    again = swarm(stack, "down")
    assert again.returncode == 0 and "No local stack is running." in again.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


def test_commands_without_a_stack_say_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "SWARM_HOME": str(tmp_path), "SWARM_NATS_URL": f"nats://127.0.0.1:{free_port_block(1)}"}
    for args in (["status"], ["runs"], ["cancel", "r1"], ["stats"], ["report", "r1"], ["restart", "worker"], ["top"]):
        result = subprocess.run([sys.executable, "-m", "swarm.ops.cli", *args], env=env, capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "swarm up" in result.stderr, (args, result.stderr)
