"""Run inside the sandbox child (`python -I -B sandbox_boot.py CONFIG_JSON`, code on stdin): confine, then exec.

Order matters: read the code, set the resource limits, drop to the unprivileged user (when started as
root), install the audit hook, and only then compile and run the untrusted code. Standard library only.
"""

import json
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

# Audit events that start or signal processes, or load native code: refused outright.
_DENIED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.killpg",
    "os.startfile", "subprocess.Popen", "pty.spawn", "code.__new__", "sys.setprofile", "sys.settrace",
    "winreg.ConnectRegistry",
})  # fmt: skip
_DENIED_PREFIXES = ("socket.", "ctypes.", "_ctypes.", "mmap.", "urllib.Request", "http.client.", "ftplib.", "smtplib.")
# Audit events whose first argument(s) are paths that are written: they must lie inside the work directory.
_WRITE_PATH_EVENTS = {
    "os.mkdir": 1, "os.rmdir": 1, "os.remove": 1, "os.rename": 2, "os.symlink": 2, "os.link": 2,
    "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.chflags": 1, "os.lchflags": 1,
    "os.setxattr": 1, "os.removexattr": 1, "shutil.copyfile": 2, "shutil.copymode": 2, "shutil.copystat": 2,
    "shutil.rmtree": 1, "shutil.move": 2, "shutil.make_archive": 1, "shutil.unpack_archive": 2,
}  # fmt: skip
# Imported before the privilege drop, for interpreters installed where the sandbox user cannot read
# (e.g. a pyenv Python under /root): the modules agents' code commonly uses.
_PREIMPORT = (
    "math", "cmath", "json", "re", "collections", "itertools", "functools", "operator", "statistics",
    "decimal", "fractions", "random", "datetime", "time", "calendar", "string", "textwrap", "heapq",
    "bisect", "hashlib", "base64", "binascii", "csv", "io", "dataclasses", "typing", "copy", "pprint",
    "difflib", "unicodedata", "struct", "array", "enum", "numbers", "zlib", "uuid", "fnmatch", "glob",
    "pathlib", "html", "traceback", "contextlib", "abc", "types", "graphlib", "secrets", "zoneinfo",
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path: object, roots: tuple[str, ...]) -> bool:
    try:
        real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def _hook(workdir: str, read_roots: tuple[str, ...]) -> Callable[[str, tuple[Any, ...]], None]:
    write_roots = (workdir,)

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return  # an already open descriptor
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & _WRITE_FLAGS)
            if not _inside(path, write_roots if writes else read_roots):
                raise PermissionError(f"sandbox: {'writing' if writes else 'reading'} {path!r} is not allowed")
        elif event in _DENIED_EVENTS or event.startswith(_DENIED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in _WRITE_PATH_EVENTS:
            for path in args[: _WRITE_PATH_EVENTS[event]]:
                if isinstance(path, int | None):
                    continue
                if not _inside(path, write_roots):
                    raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")

    return audit


def main() -> None:
    config = json.loads(sys.argv[1])
    code = sys.stdin.read()
    workdir = os.path.realpath(config["workdir"])
    os.chdir(workdir)
    cpu_s, memory, fsize = config["cpu_s"], config["memory_bytes"], config["file_bytes"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    # No new processes or threads at all (the audit hook refuses them too); counted per user, hence 0.
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    if config.get("uid") is not None:
        for name in _PREIMPORT:
            try:
                __import__(name)
            except ImportError:
                pass
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
        if os.getuid() != config["uid"] or os.geteuid() != config["uid"]:
            raise SystemExit("sandbox: could not drop privileges")
    read_roots = tuple(
        os.path.realpath(p)
        for p in (workdir, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *config["read_roots"])
    )
    sys.stdin = open(os.devnull)  # the untrusted code gets no input
    if config.get("audit_hook", True):
        sys.addaudithook(_hook(workdir, read_roots))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(code, "<sandbox>", "exec"), namespace)  # the point of the sandbox


if __name__ == "__main__":
    main()
