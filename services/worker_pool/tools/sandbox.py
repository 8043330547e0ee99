"""Running untrusted Python: a subprocess with CPU, memory, file-size and wall-clock limits and no network.

Layers, strongest first (each one used when this machine allows it, see `SandboxInfo`):
1. a fresh network namespace (`unshare --net`, needs root or user namespaces): no interface but a
   down loopback, so no connection leaves the process whatever the code does;
2. an unprivileged user (the worker runs as root: setuid to `sandbox_user`, default nobody): the kernel
   refuses writes to the worker's files and reads of private ones (/etc/shadow, /root);
3. resource limits (RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC=0) and a wall-clock
   timeout that kills the process group;
4. inside the child, a CPython audit hook installed before the code runs: no sockets, no new processes,
   no ctypes, writes only inside a fresh temporary directory, reads only there and in Python's own tree;
   plus isolated mode (-I: no environment variables, no user site, no current directory on sys.path).
Layer 4 alone is not a security boundary (audit hooks can be bypassed by code that corrupts the
interpreter); it is what remains where 1 and 2 are unavailable, and defence in depth where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BOOT_SCRIPT = Path(__file__).with_name("sandbox_boot.py")
EXTRA_READ_ROOTS = ("/usr/share/zoneinfo", "/dev/null", "/dev/urandom")
SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "segmentation fault",
}


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use."""

    cpu_s: int = 5
    memory_bytes: int = 512 * 2**20
    wall_s: float = 10.0
    file_bytes: int = 16 * 2**20
    output_bytes: int = 64 * 1024
    user: str | None = "nobody"
    audit_hook: bool = True  # False only in tests that prove the other layers on their own


@dataclass(frozen=True)
class SandboxRun:
    """The outcome of one run."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the code ran to its end without an error."""
        return self.exit_code == 0 and not self.timed_out

    def as_dict(self) -> dict[str, object]:
        """What the model sees."""
        result: dict[str, object] = {"exit_code": self.exit_code, "stdout": self.stdout, "stderr": self.stderr}
        if self.timed_out or self.reason:
            result["reason"] = self.reason
        return result


@dataclass(frozen=True)
class SandboxInfo:
    """Which confinement layers this machine supports."""

    network_namespace: bool
    uid: int | None
    gid: int | None


@functools.cache
def _netns_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def probe(user: str | None) -> SandboxInfo:
    """The layers available here (probed once per process: `unshare --net true`, the user's uid)."""
    uid = gid = None
    if user and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    return SandboxInfo(network_namespace=_netns_available(), uid=uid, gid=gid)


class PythonSandbox:
    """Runs code strings in confined subprocesses, at most `concurrency` at once."""

    def __init__(self, limits: SandboxLimits, concurrency: int = 2) -> None:
        self.limits = limits
        self.info = probe(limits.user)
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self, code: str, limits: SandboxLimits | None = None) -> SandboxRun:
        """Run `code` to its end or its limits; its stdout and stderr are cut to `output_bytes`."""
        limits = limits or self.limits
        async with self._slots:
            base = Path(tempfile.mkdtemp(prefix="swarm-sandbox-"))
            try:
                return await self._run_in(base, code, limits)
            finally:
                shutil.rmtree(base, ignore_errors=True)

    def _prepare(self, base: Path, limits: SandboxLimits) -> tuple[Path, list[str], BinaryIO, BinaryIO]:
        """The work dir (the child's, 0700), its argv, and the files its output goes to (ours, out of its reach)."""
        base.chmod(0o711)
        workdir = base / "work"
        workdir.mkdir(mode=0o700)
        if self.info.uid is not None:
            os.chown(workdir, self.info.uid, self.info.gid or -1)
        config = {
            "workdir": str(workdir), "cpu_s": limits.cpu_s, "memory_bytes": limits.memory_bytes,
            "file_bytes": limits.file_bytes, "uid": self.info.uid, "gid": self.info.gid,
            "read_roots": list(EXTRA_READ_ROOTS), "audit_hook": limits.audit_hook,
        }  # fmt: skip
        argv = [sys.executable, "-I", "-B", str(BOOT_SCRIPT), json.dumps(config)]
        if self.info.network_namespace:
            argv = ["unshare", "--net", *argv]
        return workdir, argv, (base / "stdout").open("wb+"), (base / "stderr").open("wb+")

    async def _run_in(self, base: Path, code: str, limits: SandboxLimits) -> SandboxRun:
        workdir, argv, out, err = self._prepare(base, limits)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        with out, err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                start_new_session=True,
            )  # fmt: skip
            timed_out = False
            try:
                assert proc.stdin is not None
                proc.stdin.write(code.encode())
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    await proc.stdin.drain()
                proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), limits.wall_s)
                except TimeoutError:
                    timed_out = True
            finally:
                if proc.returncode is None:  # timed out, or the step was cancelled
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            stdout, stderr = _head(out, limits.output_bytes), _head(err, limits.output_bytes)
        code_ = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        if timed_out:
            reason = f"wall-clock limit of {limits.wall_s:g}s exceeded"
        elif code_ < 0:
            sig = signal.Signals(-code_)
            reason = SIGNAL_REASONS.get(sig, f"killed by {sig.name}")
        else:
            reason = ""
        return SandboxRun(exit_code=code_, stdout=stdout, stderr=stderr, timed_out=timed_out, reason=reason)


def _head(file: BinaryIO, limit: int) -> str:
    file.seek(0)
    data: bytes = file.read(limit + 1)
    text = data[:limit].decode(errors="replace")
    return text + "\n[output truncated]" if len(data) > limit else text
