"""The Python sandbox: real subprocesses; every escape attempt must fail, and ordinary code must run."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.worker_pool.tools.sandbox import PythonSandbox, SandboxLimits, probe

LIMITS = SandboxLimits(cpu_s=1, wall_s=3.0, memory_bytes=256 * 2**20, file_bytes=2**20, output_bytes=4096)
INFO = probe(LIMITS.user)
needs_uid_drop = pytest.mark.skipif(INFO.uid is None, reason="the sandbox user needs a worker running as root")
needs_netns = pytest.mark.skipif(not INFO.network_namespace, reason="unshare --net is not available here")


def exists(path: str) -> bool:
    return Path(path).exists()


@pytest.fixture
def sandbox() -> PythonSandbox:
    return PythonSandbox(LIMITS, concurrency=2)


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP listener on 127.0.0.1 the sandboxed code will try to reach."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the sandbox that anyone may write to (as /tmp is)."""
    tmp_path.chmod(0o777)
    return tmp_path


async def test_ordinary_code_runs_and_may_use_its_own_directory(sandbox: PythonSandbox) -> None:
    code = (
        "import json, math, statistics\n"
        "open('notes.txt', 'w').write('kept')\n"
        "print(json.dumps({'root': math.isqrt(49), 'mean': statistics.mean([1, 2, 3]), 'notes': open('notes.txt').read()}))"
    )
    run = await sandbox.run(code)
    assert run.ok, run
    assert run.stdout.strip() == '{"root": 7, "mean": 2, "notes": "kept"}'


async def test_errors_come_back_as_stderr(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("raise ValueError('nope')")
    assert not run.ok and run.exit_code == 1
    assert "ValueError: nope" in run.stderr


async def test_output_is_cut_to_the_limit(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("print('x' * 100_000)")
    assert run.ok
    assert len(run.stdout) < 5000 and run.stdout.endswith("[output truncated]")


@pytest.mark.parametrize(
    "code",
    [
        "open({path!r}, 'w').write('escaped')",
        "import os; fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT); os.write(fd, b'escaped')",
        "import os; os.symlink({dir!r}, 'link'); open('link/escaped.txt', 'w').write('escaped')",
        "import shutil; open('f', 'w').write('escaped'); shutil.copyfile('f', {path!r})",
        "import os; open('f', 'w').write('escaped'); os.rename('f', {path!r})",
    ],
    ids=["open", "os.open", "symlink", "copyfile", "rename"],
)
async def test_writing_outside_the_temp_dir_fails(sandbox: PythonSandbox, outside: Path, code: str) -> None:
    target = outside / "escaped.txt"
    run = await sandbox.run(code.format(path=str(target), dir=str(outside)))
    assert not run.ok
    assert not target.exists()


async def test_reading_private_files_fails(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("print(open('/etc/shadow').read())")
    assert not run.ok and run.stdout == ""
    assert "PermissionError" in run.stderr


async def test_connecting_to_a_local_port_fails(sandbox: PythonSandbox, listener: int) -> None:
    code = f"import socket; s = socket.create_connection(('127.0.0.1', {listener}), timeout=1); print('connected')"
    run = await sandbox.run(code)
    assert not run.ok and "connected" not in run.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True:\n    os.fork()",
        "import subprocess; print(subprocess.run(['id'], capture_output=True).stdout)",
        "import os; os.system('touch /tmp/swarm-sandbox-escape')",
        "import ctypes; print(ctypes.CDLL(None).getpid())",
    ],
    ids=["fork-bomb", "subprocess", "os.system", "ctypes"],
)
async def test_new_processes_and_native_calls_fail(sandbox: PythonSandbox, code: str) -> None:
    run = await sandbox.run(code)
    assert not run.ok
    assert run.stdout == ""
    assert not exists("/tmp/swarm-sandbox-escape")


async def test_an_infinite_loop_hits_the_cpu_limit(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("while True:\n    pass")
    assert not run.ok and run.reason == "CPU time limit exceeded"


async def test_sleeping_forever_hits_the_wall_clock_limit(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("import time; time.sleep(60)")
    assert run.timed_out and "wall-clock" in run.reason


async def test_allocating_2_gb_fails(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("x = bytearray(2 * 1024**3); print(len(x))")
    assert not run.ok and "MemoryError" in run.stderr and run.stdout == ""


async def test_a_huge_file_hits_the_file_size_limit(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * 2**20)\n    f.flush()")
    assert not run.ok


async def test_the_temp_dir_is_removed_afterwards(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("import os; print(os.getcwd())")
    assert run.ok
    assert not exists(run.stdout.strip())


# Each confinement layer on its own, with the audit hook switched off: the kernel must refuse too.


@needs_netns
async def test_without_the_audit_hook_the_network_namespace_still_blocks(listener: int) -> None:
    sandbox = PythonSandbox(SandboxLimits(user=None, audit_hook=False, wall_s=5.0))
    run = await sandbox.run(f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=1)")
    assert not run.ok and "Network is unreachable" in run.stderr


@needs_uid_drop
async def test_without_the_audit_hook_the_unprivileged_user_still_blocks(outside: Path) -> None:
    sandbox = PythonSandbox(SandboxLimits(audit_hook=False, wall_s=5.0))
    private = outside / "private"
    private.mkdir(mode=0o755)  # owned by the worker's user, not writable by the sandbox user
    run = await sandbox.run(
        f"import os\n"
        f"for attempt in (lambda: open({str(private / 'x')!r}, 'w'), lambda: open('/etc/shadow').read(), os.fork):\n"
        f"    try:\n        attempt()\n        print('escaped')\n    except OSError as exc:\n        print(type(exc).__name__)"
    )
    assert run.ok, run
    assert run.stdout.split() == ["PermissionError", "PermissionError", "BlockingIOError"]
    assert os.listdir(private) == []
