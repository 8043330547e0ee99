"""Following a run (SDK and CLI) survives poison on the run's subjects: it is skipped and logged."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

from swarm.bus import Bus
from swarm.client import SwarmClient
from swarm.contracts import DEFAULT_TENANT, RunCancelled, RunProgress, Subjects
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

POISON = (
    os.urandom(64),  # random bytes
    b"\xff\xfe not utf-8",
    b'{"kind": "progress"}',  # JSON, but not a RunProgress
    b'{"kind": "no-such-kind", "run_id": "x"}',
    b"[1, 2, 3]",
)


async def publish_poison(bus: Bus, run_id: str) -> None:
    for i, data in enumerate(POISON):
        kind = "progress" if i % 2 == 0 else "cancel"  # a tenant may publish .cancel on its own runs
        await bus.js.publish(Subjects.run_event(DEFAULT_TENANT, run_id, kind), data)


async def test_sdk_follower_skips_and_logs_what_is_not_a_run_event(
    bus: Bus, nats_settings: NatsSettings, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = "poisoned-run"
    progress = RunProgress(
        run_id=run_id, tenant=DEFAULT_TENANT, steps_total=2, steps_queued=1, steps_succeeded=1,
        steps_failed=0, retries_count=0,
    )  # fmt: skip
    await publish_poison(bus, run_id)
    await bus.publish(Subjects.run_event(DEFAULT_TENANT, run_id, "progress"), progress)
    await bus.publish(
        Subjects.run_event(DEFAULT_TENANT, run_id, "cancelled"),
        RunCancelled(run_id=run_id, tenant=DEFAULT_TENANT, reason="test"),
    )
    caplog.set_level(logging.WARNING, logger="swarm.client")
    async with await SwarmClient.connect(nats_settings) as client:
        kinds = [event.kind async for event in client.events(run_id)]
    assert kinds == ["progress", "cancelled"]
    skipped = [r for r in caplog.records if "not a run event" in r.getMessage()]
    assert len(skipped) == len(POISON)
    assert all(".poisoned-run." in r.getMessage() for r in skipped)


async def test_cli_follow_survives_poison_on_the_run_subject(bus: Bus, nats_settings: NatsSettings) -> None:
    """`swarm submit --follow` as a user runs it; nothing plans the task, so the test plays the services."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarm.cli", "submit", "a goal", "--follow", "--nats-url", nats_settings.url,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "100"},
    )  # fmt: skip
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert first.startswith("Submitted run "), first
    run_id = first.split()[-1]
    await publish_poison(bus, run_id)
    await bus.publish(
        Subjects.run_event(DEFAULT_TENANT, run_id, "cancelled"),
        RunCancelled(run_id=run_id, tenant=DEFAULT_TENANT, reason="stopped by the test"),
    )
    _, errors = await asyncio.wait_for(proc.communicate(), 30)
    stderr = errors.decode()
    assert "Traceback" not in stderr, stderr
    assert "stopped by the test" in stderr  # the follow reached the terminal event past the poison
    assert "not a run event" in stderr
    assert proc.returncode == 1  # a cancelled run is not an answer
