"""`swarm status` tells alive from dead: an exited child (a zombie) is dead, and a pid is alive only while
it is still the program the stack started (pids are reused)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from swarm.stack import _alive


def test_an_exited_child_is_dead_not_a_zombie_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child.pid}/cmdline"):
        if open(f"/proc/{child.pid}/stat").read().split()[2] == "Z":
            break  # exited, not yet reaped: os.kill(pid, 0) would still succeed
        time.sleep(0.05)
    assert not _alive(child.pid)


def test_a_pid_is_alive_only_as_the_program_it_was() -> None:
    me = os.getpid()
    assert _alive(me)
    assert _alive(me, "python")
    assert not _alive(me, "services.worker_pool")  # this pid, had it been reused, is not the worker
