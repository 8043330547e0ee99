"""Escape attempts against the python tool's sandbox, each written as a hostile agent would (issue #10).

Every fixture below is hostile code run through the real sandbox (bwrap here). Most start with the two
lines that switched off the audit hook of the previous design, then attack: they must fail because the
kernel refuses, not because Python was asked nicely. Run as root (CI) and as an unprivileged user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import services.worker_pool.tools.sandbox as sandbox_module
from services.worker_pool.tools.sandbox import PythonSandbox, SandboxLimits

LIMITS = SandboxLimits(cpu_s=2, wall_s=4.0, memory_bytes=256 * 2**20, file_bytes=2**20, output_bytes=4096)
# The previous sandbox's audit hook read these module globals at every event: reassigning them disabled it.
HOOK_OFF = (
    "import sys\n"
    "_boot = sys.modules['__main__']\n"
    "for _name, _value in (('_DENIED_EVENTS', frozenset()), ('_DENIED_PREFIXES', ('-',)), ('_WRITE_PATH_EVENTS', {}),\n"
    "                      ('_inside', lambda *a: True)):\n"
    "    setattr(_boot, _name, _value)\n"
)


def attempt(body: str) -> str:
    """`body` (which may use `try_(label, fn)`) after the hook-disabling prologue; each outcome is printed."""
    helper = (
        "def try_(label, fn):\n"
        "    try:\n"
        "        print(label, 'ESCAPED', repr(fn())[:300])\n"
        "    except BaseException as exc:\n"
        "        print(label, 'refused', type(exc).__name__)\n"
    )
    return HOOK_OFF + helper + body


@pytest.fixture
def sandbox() -> PythonSandbox:
    return PythonSandbox(LIMITS, concurrency=2)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the worker's user (a sibling of the sandboxed run) that hostile code tries to kill."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real TCP listener on 127.0.0.1, as the worker's NATS server is."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    yield server
    server.close()


def escaped(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "ESCAPED" in line]


def read(path: str) -> str:
    return Path(path).read_text()


def processes_named(name: str) -> list[str]:
    """Pids of the host's processes whose name (comm) is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(entry.name)
        except OSError:
            continue
    return found


# A worker process started with the NATS password in its environment, as in production: it runs the
# hostile code from stdin in its sandbox and prints the outcome (/proc/<pid>/environ shows a process's
# environment as it started, so the password cannot simply be set in this test process).
WORKER = (
    "import asyncio, json, sys\n"
    "from services.worker_pool.tools.sandbox import PythonSandbox, SandboxLimits\n"
    "run = asyncio.run(PythonSandbox(SandboxLimits(cpu_s=2, wall_s=4.0)).run(sys.stdin.read()))\n"
    "print(json.dumps([run.stdout, run.stderr]))\n"
)


async def test_the_parent_environment_and_its_nats_password_are_out_of_reach() -> None:
    secret = f"nats-password-{uuid.uuid4().hex}"
    code = attempt(
        "import os\n"
        "print(sorted(os.environ))\n"
        "for pid in [str(os.getppid())] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if b'SWARM_NATS_PASSWORD' in data:\n"
        "        print(pid, 'ESCAPED', data)\n"
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, env={**os.environ, "SWARM_NATS_PASSWORD": secret},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await worker.communicate(code.encode())
    stdout, stderr = json.loads(out)
    assert secret not in stdout + stderr
    assert "SWARM_NATS_PASSWORD" not in stdout and escaped(stdout) == [], stdout


async def test_proc_shows_no_process_outside_the_run(sandbox: PythonSandbox) -> None:
    own_cmdline = read("/proc/self/cmdline").encode()
    code = attempt(
        "import os\n"
        "for pid in sorted(int(p) for p in os.listdir('/proc') if p.isdigit()):\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/cmdline', 'rb').read().hex())\n"
        "    except OSError:\n"
        "        pass\n"
        f"try_('worker-cwd', lambda: os.listdir('/proc/{os.getpid()}/cwd'))\n"
        f"try_('worker-root', lambda: os.listdir('/proc/{os.getpid()}/root/etc'))\n"
    )
    run = await sandbox.run(code)
    assert run.ok, run
    assert own_cmdline.hex() not in run.stdout
    assert escaped(run.stdout) == []
    # Only the run's own processes: bwrap's init and the interpreter.
    assert len([line for line in run.stdout.splitlines() if line.split()[0].isdigit()]) <= 2, run.stdout


async def test_dir_fd_traversal_reaches_no_host_file(sandbox: PythonSandbox) -> None:
    code = attempt(
        "import os\n"
        "workdir = os.open('.', os.O_RDONLY)\n"
        "os.makedirs('a/b/c/d/e/f/g/h')\n"
        "os.chdir('a/b/c/d/e/f/g/h')  # the path below looks like it stays inside from here\n"
        "def read():\n"
        "    fd = os.open('../' * 8 + 'etc/passwd', os.O_RDONLY, dir_fd=workdir)\n"
        "    return os.read(fd, 4096)\n"
        "try_('dir_fd', read)\n"
    )
    run = await sandbox.run(code)
    assert "root:x:0:0" not in run.stdout
    assert escaped(run.stdout) == [], run.stdout


async def test_signals_reach_neither_the_worker_nor_its_other_processes(
    sandbox: PythonSandbox, victim: subprocess.Popen[bytes]
) -> None:
    code = attempt(
        "import os, signal\n"
        f"try_('worker', lambda: os.kill({os.getpid()}, 0))\n"
        f"try_('sibling', lambda: os.kill({victim.pid}, signal.SIGKILL))\n"
        f"try_('group', lambda: os.killpg({os.getpgid(victim.pid)}, signal.SIGKILL))\n"
    )
    run = await sandbox.run(code)
    await asyncio.sleep(0.1)
    assert victim.poll() is None, "the sandboxed code killed a process of the worker's user"
    assert escaped(run.stdout) == [], run.stdout


async def test_a_concurrent_run_can_neither_read_nor_kill_another(sandbox: PythonSandbox) -> None:
    secret = uuid.uuid4().hex
    victim_code = (
        f"open('secret-victim', 'w').write({secret!r})\n"
        "import time\ntime.sleep(2.5)\nprint('survived')\n"
    )
    attacker_code = attempt(
        "import glob, os, time\n"
        "time.sleep(1.0)\n"
        "for path in glob.glob('/tmp/*/work/secret-victim') + glob.glob('/tmp/*/secret-victim'):\n"
        "    try_('victim-file', lambda: open(path).read())\n"
        "for pid in [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    sandboxed = b'sandbox_boot' in cmdline or b'setrlimit' in cmdline  # how a run's process looks\n"
        "    if sandboxed and pid not in (1, os.getpid(), os.getppid()):\n"
        "        try_('victim-kill', lambda: os.kill(pid, 9))\n"
    )
    victim_run, attacker_run = await asyncio.gather(sandbox.run(victim_code), sandbox.run(attacker_code))
    assert victim_run.ok and victim_run.stdout.strip() == "survived", victim_run
    assert secret not in attacker_run.stdout
    assert escaped(attacker_run.stdout) == [], attacker_run.stdout


async def test_no_file_persists_from_one_run_to_the_next(sandbox: PythonSandbox) -> None:
    marker = f"persist-{uuid.uuid4().hex}"
    places = ("/tmp", "/dev/shm", "/var/tmp", ".", os.environ.get("HOME", "/root"))
    writer = attempt(
        "import os\n"
        f"for place in {places!r}:\n"
        f"    try_(place, lambda: open(os.path.join(place, {marker!r}), 'w').write('x'))\n"
        "try_('home', lambda: open(os.path.join(os.environ.get('HOME', '.'), " + repr(marker) + "), 'w').write('x'))\n"
    )
    await sandbox.run(writer)
    reader = attempt(
        "import os\n"
        f"for place in {places!r} + (os.environ.get('HOME', '.'),):\n"
        f"    if os.path.exists(os.path.join(place, {marker!r})):\n"
        "        print(place, 'ESCAPED')\n"
    )
    run = await sandbox.run(reader)
    try:
        assert escaped(run.stdout) == [], run.stdout
    finally:
        for place in places:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(place, marker))


async def test_the_network_is_unreachable_by_address_and_by_name(
    sandbox: PythonSandbox, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    code = attempt(
        "import socket\n"
        f"try_('127.0.0.1', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=1).close())\n"
        f"try_('localhost', lambda: socket.create_connection(('localhost', {port}), timeout=1).close())\n"
        "try_('dns', lambda: socket.getaddrinfo('deb.debian.org', 80))\n"
    )
    run = await sandbox.run(code)
    with pytest.raises(TimeoutError):
        listener.accept()[0].close()  # nothing ever connected
    assert escaped(run.stdout) == [], run.stdout


async def test_the_worker_code_cannot_be_rewritten(sandbox: PythonSandbox, tmp_path: Path) -> None:
    # A copy of the worker's package as the worker's user owns it (0644 in a 0755 dir), as the image does.
    code_dir = tmp_path / "worker_pool"
    code_dir.mkdir(mode=0o755)
    module = code_dir / "sandbox.py"
    original = read(sandbox_module.__file__)
    module.write_text(original)
    module.chmod(0o644)
    code = attempt(
        "import os\n"
        f"try_('copy', lambda: open({str(module)!r}, 'a').write('# captured'))\n"
        f"try_('new-file', lambda: open({str(code_dir / 'sitecustomize.py')!r}, 'w').write('x'))\n"
        f"try_('real', lambda: open({sandbox_module.__file__!r}, 'a').close())\n"
    )
    run = await sandbox.run(code)
    assert read(str(module)) == original
    assert read(sandbox_module.__file__) == original
    assert not (code_dir / "sitecustomize.py").exists()
    assert escaped(run.stdout) == [], run.stdout


async def test_a_fork_bomb_is_capped_and_leaves_nothing_behind(sandbox: PythonSandbox) -> None:
    tag = f"bomb{uuid.uuid4().hex[:8]}"
    code = attempt(
        "import os, time\n"
        f"open('/proc/self/comm', 'w').write({tag!r})  # children inherit the name: found on the host below\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
    )
    run = await sandbox.run(code)
    assert not run.ok
    await asyncio.sleep(0.3)
    left = processes_named(tag)
    assert left == [], f"{len(left)} processes of the bomb outlived the run"
    true = await asyncio.create_subprocess_exec("true")
    assert await true.wait() == 0  # the worker can still start processes


async def test_allocating_4_gib_fails_in_every_process(sandbox: PythonSandbox) -> None:
    code = attempt(
        "import os\n"
        "def grab():\n"
        "    x = bytearray(4 * 1024**3)\n"
        "    return len(x)\n"
        "try_('main', grab)\n"
    )
    run = await sandbox.run(code)
    assert escaped(run.stdout) == [], run.stdout
    assert "main refused MemoryError" in run.stdout


async def test_a_cpu_loop_ignoring_sigxcpu_is_killed(sandbox: PythonSandbox) -> None:
    code = attempt("import _signal\n_signal.signal(_signal.SIGXCPU, _signal.SIG_IGN)\nwhile True:\n    pass\n")
    run = await sandbox.run(code)
    assert not run.ok and (run.timed_out or run.exit_code < 0), run


async def test_100_mb_of_stdout_is_cut_and_the_run_still_finishes(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)\nprint('done', file=sys.stderr)")
    assert run.ok, run
    assert run.stdout.endswith("[output truncated]") and len(run.stdout) < LIMITS.output_bytes + 100
    assert run.stderr.strip() == "done"


async def test_ctypes_reaches_no_dangerous_system_call(sandbox: PythonSandbox) -> None:
    code = attempt(
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "results = {\n"
        "    'unshare(NEWUSER)': libc.unshare(0x10000000),\n"
        "    'unshare(NEWNET)': libc.unshare(0x40000000),\n"
        "    'ptrace(TRACEME)': libc.ptrace(0, 0, 0, 0),\n"
        "    'keyctl': libc.syscall(250, 0, 0, 0, 0),\n"
        "    'bpf': libc.syscall(321, 0, 0, 0),\n"
        "    'mount': libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),\n"
        "}\n"
        "print(json.dumps(results))\n"
    )
    run = await sandbox.run(code)
    results = json.loads(run.stdout.strip().splitlines()[-1]) if run.ok else {}
    assert results and all(value == -1 for value in results.values()), (run.stdout, run.stderr)


async def test_subclasses_tricks_reach_nothing_outside(sandbox: PythonSandbox) -> None:
    # No import statement at all: the modules come from object.__subclasses__(), the classic way out.
    code = (
        "for cls in ().__class__.__base__.__subclasses__():\n"
        "    if cls.__name__ == 'BuiltinImporter':\n"
        "        sys_ = cls.load_module('sys')\n"
        "        break\n"
        "boot = sys_.modules['__main__']\n"
        "for name, value in (('_DENIED_EVENTS', frozenset()), ('_DENIED_PREFIXES', ('-',)), ('_inside', lambda *a: True)):\n"
        "    setattr(boot, name, value)\n"
        "io_ = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'BuiltinImporter'][0].load_module('_io')\n"
        "for path in ('/etc/passwd', " + repr(sandbox_module.__file__) + "):\n"
        "    try:\n"
        "        print(path, 'ESCAPED', io_.open(path).read()[:200])\n"
        "    except OSError as exc:\n"
        "        print(path, 'refused', type(exc).__name__)\n"
    )
    run = await sandbox.run(code)
    assert "root:x:0:0" not in run.stdout and "bubblewrap" not in run.stdout
    assert escaped(run.stdout) == [], run.stdout
