"""Running untrusted Python behind a kernel boundary: bubblewrap namespaces, a seccomp filter and rlimits.

Every run (`SandboxMode.BWRAP`, the default) is a fresh `bwrap` with new user, pid, mount, ipc, uts, network
and cgroup namespaces; a read-only view of the Python runtime only (/usr, the interpreter's prefix,
ld.so.cache); a private, size-limited tmpfs for /tmp and the work dir, gone when the run ends; an explicit
environment; `--die-with-parent`, `--new-session`, no capabilities; a seccomp
filter (libseccomp) refusing the calls that widen the kernel's attack surface; and rlimits set inside
before the code runs (CPU, address space, processes, file size, descriptors), which no process in the
sandbox can raise. A root worker starts bwrap as `sandbox_user`, because the kernel does not count
processes against RLIMIT_NPROC for uid 0.

Fail closed: when bwrap or user namespaces are missing, `run` raises SandboxUnavailable; only
`SandboxMode.UNSAFE_NONE`, chosen explicitly, runs code without a boundary, with a warning on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.worker_pool.settings import SandboxMode

log = logging.getLogger(__name__)

WORKDIR = "/tmp/work"
# A minimal environment: nothing of the worker's (its NATS password, its paths) reaches the code.
ENV = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "segmentation fault",
}
# Refused with EPERM: debugging other processes, mounts, keyrings, eBPF, perf, new namespaces, kernel
# modules and kexec, and the rest of what container runtimes deny by default to unprivileged code.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "unshare", "setns", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "swapon",
    "swapoff", "reboot", "syslog", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "personality", "vhangup", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
)  # fmt: skip
# clone() with any namespace flag is refused like unshare(); clone3 passes its flags in memory a filter
# cannot read, so it answers ENOSYS and the C library falls back to clone().
# NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME (Python 3.11's os does not name them).
CLONE_NAMESPACE_FLAGS = (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x80)
# Run inside the sandbox before the untrusted code: hard limits it cannot raise, then the code from stdin.
BOOT = (
    "import resource, sys\n"
    "for _r, _soft, _hard in {limits!r}:\n"
    "    resource.setrlimit(_r, (_soft, _hard))\n"
    "_code = sys.stdin.read()\n"
    "sys.stdin = open('/dev/null')\n"
    "del resource, _r, _soft, _hard\n"
    "exec(compile(_code, '<sandbox>', 'exec'), {{'__name__': '__main__', '__builtins__': __builtins__}})\n"
)


class SandboxUnavailable(RuntimeError):
    """Isolation cannot be set up here; the code was not run."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use."""

    cpu_s: int = 5
    memory_bytes: int = 512 * 2**20
    wall_s: float = 10.0
    file_bytes: int = 16 * 2**20
    disk_bytes: int = 64 * 2**20
    output_bytes: int = 64 * 1024
    max_processes: int = 4
    user: str | None = "nobody"


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


@functools.cache
def seccomp_program() -> bytes:
    """The seccomp filter as BPF for `bwrap --seccomp`, built by libseccomp once per process."""
    import pyseccomp  # loads libseccomp.so.2: a failure makes the sandbox unavailable, not the worker

    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    eperm = pyseccomp.ERRNO(1)
    for name in DENIED_SYSCALLS:
        rules.add_rule(eperm, name)
    for flag in CLONE_NAMESPACE_FLAGS:  # one rule per flag: a rule's comparisons are ANDed
        rules.add_rule(eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    rules.add_rule(pyseccomp.ERRNO(38), "clone3")  # ENOSYS
    with tempfile.TemporaryFile() as file:
        rules.export_bpf(file)
        file.seek(0)
        return file.read()


def _world_usable(path: str) -> bool:
    """Whether any user may run `path`: every directory on the way searchable by others, the file readable."""
    return all(os.stat(p).st_mode & 0o001 for p in Path(path).parents) and os.stat(path).st_mode & 0o005 == 0o005


@functools.cache
def runtime(as_root: bool) -> tuple[str, tuple[str, ...]]:
    """The interpreter sandboxed code runs with, and the directories it needs read-only.

    The worker's base interpreter (not its venv: the sandbox gets the standard library only), unless the
    worker is root and that interpreter lies where the unprivileged sandbox user cannot reach it (a pyenv
    build under /root): then the system's /usr/bin/python3.
    """
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    prefix = os.path.realpath(sys.base_prefix)
    if as_root and not _world_usable(python) and os.path.exists("/usr/bin/python3"):
        python, prefix = os.path.realpath("/usr/bin/python3"), "/usr"
    roots = ("/usr",) if prefix == "/usr" or prefix.startswith("/usr/") else ("/usr", prefix)
    return python, roots


def sandbox_uid(user: str | None) -> tuple[int, int] | None:
    """The (uid, gid) bwrap runs as when the worker is root; None when the worker is not root."""
    if os.geteuid() != 0:
        return None
    if not user:
        raise SandboxUnavailable("the worker runs as root and no sandbox_user is set")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SandboxUnavailable(f"sandbox user {user!r} does not exist") from None
    if entry.pw_uid == 0:
        raise SandboxUnavailable("the sandbox user must not be root")
    return entry.pw_uid, entry.pw_gid


def rlimits(limits: SandboxLimits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) set inside the sandbox; RLIMIT_NPROC also counts bwrap's init (pid 1)."""
    return [
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),  # SIGXCPU first, SIGKILL a second later
        (resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_DATA, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
        (resource.RLIMIT_NPROC, limits.max_processes + 1, limits.max_processes + 1),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
    ]


def bwrap_argv(limits: SandboxLimits, seccomp_fd: int) -> list[str]:
    """The bwrap command line for one run (the seccomp filter comes as an inherited fd)."""
    python, roots = runtime(os.geteuid() == 0)
    bwrap = shutil.which("bwrap") or "bwrap"
    # No --disable-userns: gVisor lacks the /proc/sys/user/max_user_namespaces it needs, and the seccomp
    # filter already refuses new namespaces (unshare, setns, clone with CLONE_NEW*).
    argv = [
        bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
    ]  # fmt: skip
    for root in roots:
        argv += ["--ro-bind", root, root]
    for link in ("/bin", "/lib", "/lib64", "/sbin"):  # merged /usr: these are symlinks into it
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += [
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(limits.disk_bytes), "--tmpfs", "/tmp", "--dir", WORKDIR,
        "--remount-ro", "/", "--remount-ro", "/dev", "--chdir", WORKDIR, "--clearenv",
    ]  # fmt: skip
    for name, value in ENV.items():
        argv += ["--setenv", name, value]
    argv += ["--seccomp", str(seccomp_fd), "--", python, "-I", "-S", "-c", BOOT.format(limits=rlimits(limits))]
    return argv


@functools.cache
def unavailable_reason(user: str | None) -> str | None:
    """Why bwrap cannot isolate code here (None: it can); probed once per process by a real sandboxed run."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (make install does it)"
    limits = SandboxLimits(user=user)
    try:
        ids = sandbox_uid(user)
        with tempfile.TemporaryFile() as program:
            program.write(seccomp_program())
            program.seek(0)
            proc = subprocess.run(
                bwrap_argv(limits, program.fileno()), input=b"print(6 * 7)", capture_output=True, env={},
                timeout=30, pass_fds=(program.fileno(),), **_as_user(ids),
            )  # fmt: skip
    except (ImportError, OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"bwrap cannot start: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != b"42":
        detail = proc.stderr.decode(errors="replace").strip()[-500:]
        return f"bwrap cannot set up a sandbox here (user namespaces disabled?): {detail or proc.returncode}"
    return None


def startup_warning(mode: SandboxMode, user: str | None) -> str | None:
    """What the worker must say at start-up about its python tool (None: code runs sandboxed)."""
    if mode is SandboxMode.UNSAFE_NONE:
        return "SANDBOX DISABLED (SWARM_WORKER_SANDBOX=unsafe-none): agent code will run without any isolation"
    if (reason := unavailable_reason(user)) is not None:
        return f"the python tool will refuse every call: {reason}"
    return None


def _as_user(ids: tuple[int, int] | None) -> dict[str, Any]:
    """Popen arguments that start bwrap as the unprivileged sandbox user (none: as the worker's user)."""
    return {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}


class PythonSandbox:
    """Runs code strings in sandboxed subprocesses, at most `concurrency` at once."""

    def __init__(self, limits: SandboxLimits, concurrency: int = 2, mode: SandboxMode = SandboxMode.BWRAP) -> None:
        self.limits = limits
        self.mode = mode
        self._slots = asyncio.Semaphore(concurrency)

    def unavailable(self) -> str | None:
        """Why this sandbox cannot run code (None: it can)."""
        return unavailable_reason(self.limits.user) if self.mode is SandboxMode.BWRAP else None

    async def run(self, code: str, limits: SandboxLimits | None = None) -> SandboxRun:
        """Run `code` to its end or its limits; its stdout and stderr are cut to `output_bytes`."""
        limits = limits or self.limits
        if self.mode is SandboxMode.UNSAFE_NONE:
            log.warning("SANDBOX DISABLED (unsafe-none): running agent code with the worker's own privileges")
            async with self._slots:
                with tempfile.TemporaryDirectory(prefix="swarm-unsafe-") as workdir:
                    # No RLIMIT_NPROC: outside a user namespace it counts every process of the worker's user.
                    kept = [r for r in rlimits(limits) if r[0] != resource.RLIMIT_NPROC]
                    argv = [runtime(os.geteuid() == 0)[0], "-I", "-S", "-c", BOOT.format(limits=kept)]
                    return await _execute(argv, code, limits, cwd=workdir, env={**ENV, "HOME": workdir})
        reason = self.unavailable()
        if reason is not None:
            raise SandboxUnavailable(reason)
        ids = sandbox_uid(limits.user)
        async with self._slots:
            with tempfile.TemporaryFile() as program:
                program.write(seccomp_program())
                program.seek(0)
                argv = bwrap_argv(limits, program.fileno())
                return await _execute(argv, code, limits, pass_fds=(program.fileno(),), **_as_user(ids))


async def _execute(
    argv: list[str], code: str, limits: SandboxLimits, *, cwd: str | None = None, env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (), **popen: Any,
) -> SandboxRun:  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=env or {}, pass_fds=pass_fds, start_new_session=True, **popen,
    )  # fmt: skip
    assert proc.stdin and proc.stdout and proc.stderr
    readers = [asyncio.create_task(_read_capped(s, limits.output_bytes)) for s in (proc.stdout, proc.stderr)]
    timed_out = False
    try:
        proc.stdin.write(code.encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await proc.stdin.drain()
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), limits.wall_s)
        except TimeoutError:
            timed_out = True
    finally:
        if proc.returncode is None:  # timed out, or the step was cancelled: bwrap's death ends the sandbox
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        (stdout, out_cut), (stderr, err_cut) = await asyncio.gather(*readers)
    returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    # bwrap reports a child killed by a signal as 128 + the signal, as shells do.
    if returncode > 128 and (returncode - 128) in SIGNAL_REASONS:
        returncode = -(returncode - 128)
    if timed_out:
        reason = f"wall-clock limit of {limits.wall_s:g}s exceeded"
    elif returncode < 0:
        sig = signal.Signals(-returncode)
        reason = SIGNAL_REASONS.get(sig, f"killed by {sig.name}")
    elif out_cut or err_cut:
        reason = f"output beyond {limits.output_bytes} bytes was dropped"
    else:
        reason = ""
    return SandboxRun(exit_code=returncode, stdout=stdout, stderr=stderr, timed_out=timed_out, reason=reason)


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes of a stream, read to its end so the writer never blocks; whether it was cut."""
    kept = bytearray()
    total = 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    text = kept.decode(errors="replace")
    return (text + "\n[output truncated]", True) if total > limit else (text, False)
