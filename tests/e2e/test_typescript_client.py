"""The contract proven from a second language: clients/typescript's tests (`npm test`) against the whole stack."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.ops.stack import Stack
from swarm.settings import StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "typescript"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = StackSettings(
        home=tmp_path_factory.mktemp("swarm-home"), nats_port=0, nats_monitor_port=0,
        gateway_backend="sim", workers=1,
    )  # fmt: skip
    # Simulated latencies at 5%: the cancel test's 20-step chain takes seconds, not minutes.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SWARM_GATEWAY_SIM_LATENCY_SCALE", "0.05")
        running = Stack(settings)
        running.up(timeout_s=180)
    yield running
    running.down()


def test_typescript_client_against_the_stack(stack: Stack) -> None:
    assert (CLIENT_DIR / "node_modules").is_dir(), f"run `make install` (npm ci in {CLIENT_DIR}) first"
    done = subprocess.run(
        ["npm", "test"], cwd=CLIENT_DIR, env={**os.environ, "SWARM_NATS_URL": stack.nats_url},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = f"{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, report
    # node's test runner closes with its counts: every test ran and passed, none was skipped.
    assert "# fail 0" in done.stdout and "# skipped 0" in done.stdout, report
    assert "# pass 11" in done.stdout, report


def test_typescript_example_prints_the_answer(stack: Stack) -> None:
    done = subprocess.run(
        ["npm", "run", "--silent", "example", "--", "Explain tides in two sentences"], cwd=CLIENT_DIR,
        env={**os.environ, "SWARM_NATS_URL": stack.nats_url}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "planned: 4 steps by 4 agents" in done.stdout and "4 steps," in done.stdout, done.stdout
