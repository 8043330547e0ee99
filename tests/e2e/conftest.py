"""On a failed e2e test, the tails of the stack's service logs go into the report (CI keeps no files)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from swarm.ops.stack import Stack
from swarm.settings import StackSettings

LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.when != "call" or not report.failed or stack is None:
        return
    for log in sorted(stack.logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        report.sections.append((f"service log {log.name} (last {len(lines)} lines)", "\n".join(lines)))


@pytest.fixture(scope="session")
def start_stack() -> Callable[[dict[str, str], StackSettings], AbstractContextManager[Stack]]:
    """A stack started with `env` set for its services (restored afterwards), stopped at the end."""

    @contextmanager
    def started(env: dict[str, str], settings: StackSettings) -> Iterator[Stack]:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            running = Stack(settings)
            running.up(timeout_s=180)
            try:
                yield running
            finally:
                running.down()

    return started
