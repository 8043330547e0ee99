"""The Python sandbox: ordinary code runs, limits hold, and it fails closed (escape attempts: test_sandbox_escapes)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.worker_pool.settings import SandboxMode, WorkerSettings
from services.worker_pool.tools import ToolContext, ToolError
from services.worker_pool.tools.builtin import PythonTool
from services.worker_pool.tools.sandbox import (
    DENIED_SYSCALLS,
    PythonSandbox,
    SandboxLimits,
    SandboxUnavailable,
    seccomp_program,
    startup_warning,
    unavailable_reason,
)

LIMITS = SandboxLimits(cpu_s=1, wall_s=3.0, memory_bytes=256 * 2**20, file_bytes=2**20, output_bytes=4096)


@pytest.fixture
def sandbox() -> PythonSandbox:
    return PythonSandbox(LIMITS, concurrency=2)


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A machine without bubblewrap: PATH holds nothing of it (the probe's cache is reset around the test)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    unavailable_reason.cache_clear()
    yield
    unavailable_reason.cache_clear()


@pytest.fixture
def userns_disabled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fake `bwrap` that fails as the real one does where user namespaces are disabled (cannot be switched off here)."""
    with tempfile.TemporaryDirectory() as bin_dir:  # not under pytest's 0700 tmp: the sandbox user runs it
        os.chmod(bin_dir, 0o755)
        fake = Path(bin_dir, "bwrap")
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        unavailable_reason.cache_clear()
        yield
        unavailable_reason.cache_clear()


def exists(path: str) -> bool:
    return Path(path).exists()


def context() -> ToolContext:
    return ToolContext(run_id="r1", tenant="t", step_id="s1", agent_id="a1", attempt=1, settings=WorkerSettings())


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


async def test_child_processes_run_inside_the_same_boundary_up_to_the_cap(sandbox: PythonSandbox) -> None:
    code = (
        "import subprocess, os\n"
        "print(subprocess.run(['id', '-u'], capture_output=True, text=True).stdout.strip())\n"
        "os.system('touch /tmp/swarm-sandbox-escape')\n"
        "print(os.path.exists('/tmp/swarm-sandbox-escape'))\n"
        "children = []\n"
        "try:\n"
        "    for _ in range(10):\n"
        "        children.append(subprocess.Popen(['sleep', '5']))\n"
        "except OSError as exc:\n"
        "    print('capped', len(children))\n"
    )
    run = await sandbox.run(code)
    assert run.stdout.split() == ["65534", "True", "capped", str(LIMITS.max_processes - 1)], run
    assert not exists("/tmp/swarm-sandbox-escape")  # the run's own /tmp, not the host's


async def test_writing_outside_the_private_tmpfs_fails(sandbox: PythonSandbox, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    target = str(tmp_path / "escaped.txt")
    run = await sandbox.run(f"open({target!r}, 'w').write('escaped')")
    assert not run.ok and not exists(target)
    run = await sandbox.run("for p in ('/usr/x', '/x', '/etc/x', '/dev/x'):\n    try:\n        open(p, 'w')\n        print(p)\n    except OSError:\n        pass")
    assert run.ok and run.stdout == ""


async def test_the_tmpfs_is_size_limited(sandbox: PythonSandbox) -> None:
    limits = SandboxLimits(disk_bytes=4 * 2**20, file_bytes=2**20, wall_s=5.0)
    code = "for i in range(8):\n    open(f'f{i}', 'wb').write(b'x' * (2**20 - 1))\nprint('wrote 8 MiB')"
    run = await sandbox.run(code, limits)
    assert not run.ok and "No space left on device" in run.stderr and run.stdout == ""


async def test_an_infinite_loop_hits_the_cpu_limit(sandbox: PythonSandbox) -> None:
    # A wall-clock limit far beyond the CPU limit: on a busy machine 1 CPU-second takes longer than 1 s.
    run = await sandbox.run("while True:\n    pass", SandboxLimits(cpu_s=1, wall_s=60.0))
    assert not run.ok and run.reason == "CPU time limit exceeded"


async def test_sleeping_forever_hits_the_wall_clock_limit(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("import time; time.sleep(60)")
    assert run.timed_out and "wall-clock" in run.reason


async def test_a_huge_file_hits_the_file_size_limit(sandbox: PythonSandbox) -> None:
    run = await sandbox.run("f = open('big', 'wb')\nfor _ in range(64):\n    f.write(b'x' * 2**20)\n    f.flush()")
    assert not run.ok and "File too large" in run.stderr  # Python ignores SIGXFSZ: the write fails instead


def test_the_seccomp_filter_is_built_by_libseccomp() -> None:
    program = seccomp_program()
    assert len(program) % 8 == 0 and len(program) // 8 > len(DENIED_SYSCALLS)  # one 8-byte BPF instruction each


# Fail closed.


async def test_without_bwrap_the_sandbox_refuses_to_run(no_bwrap: None) -> None:
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        await PythonSandbox(LIMITS).run("print(1)")


async def test_without_user_namespaces_the_sandbox_refuses_to_run(userns_disabled: None) -> None:
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace"):
        await PythonSandbox(LIMITS).run("print(1)")


async def test_the_python_tool_answers_with_a_clear_error_and_the_worker_warns(no_bwrap: None) -> None:
    tool = PythonTool.from_settings(WorkerSettings())
    with pytest.raises(ToolError, match="python tool is unavailable on this worker: bubblewrap"):
        await tool.call({"code": "print(1)"}, context())
    warning = startup_warning(SandboxMode.BWRAP, "nobody")
    assert warning and "refuse every call" in warning


async def test_unsafe_none_runs_without_a_boundary_and_says_so_every_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWARM_WORKER_SANDBOX", "unsafe-none")
    settings = WorkerSettings()
    assert settings.sandbox is SandboxMode.UNSAFE_NONE
    tool = PythonTool.from_settings(settings)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            result = await tool.call({"code": "import os; print(os.path.exists('/proc/1/environ'))"}, context())
            assert isinstance(result, dict) and result["stdout"].strip() == "True"  # the host's /proc: no boundary
    assert [r.message for r in caplog.records].count(
        "SANDBOX DISABLED (unsafe-none): running agent code with the worker's own privileges"
    ) == 2
    assert "SANDBOX DISABLED" in (startup_warning(SandboxMode.UNSAFE_NONE, "nobody") or "")


def test_the_sandbox_is_available_here() -> None:
    # CI installs bubblewrap (make install) and these machines allow user namespaces: the default must work.
    assert unavailable_reason(LIMITS.user) is None
    assert startup_warning(SandboxMode.BWRAP, LIMITS.user) is None


async def test_the_cost_benchmark_measures_both_modes() -> None:
    from loadtest.sandbox_cost import run_sandbox_cost
    from loadtest.scenarios import load_all

    assert load_all()["sandbox-cost"].needs_deployment is False
    figures = await run_sandbox_cost(runs=4)  # figures only: speed is the benchmark's business, not a test's
    assert figures["runs_per_mode"] == 4
    assert all(figures[f"{mode}_{q}_ms"] > 0 for mode in ("bwrap", "no_sandbox") for q in ("p50", "p99"))
