"""Following a run (SDK and CLI) survives poison on the run's subjects: it is skipped and logged."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

from services.aggregator.__main__ import main as aggregator_main
from services.aggregator.settings import AggregatorSettings
from services.dispatcher.__main__ import main as dispatcher_main
from services.dispatcher.settings import DispatcherSettings
from services.worker_pool.__main__ import main as worker_main
from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus
from swarm.client import SwarmClient
from swarm.contracts import (
    DEFAULT_TENANT,
    PlanSource,
    RunCancelled,
    RunPlanned,
    RunProgress,
    Subjects,
    utc_now,
)
from swarm.settings import NatsSettings
from tests.integration.test_run_engine import gateway, layered_plan, service

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
        sys.executable, "-m", "swarm.ops.cli", "submit", "a goal", "--follow", "--nats-url", nats_settings.url,
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


async def test_progress_events_name_every_finished_step_across_a_dispatcher_restart(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    """What per-agent follow lines rest on: at every progress event, the finished steps named so far are
    exactly as many as the counts say, also after a dispatcher takes the run over from its checkpoint."""
    plan = layered_plan(layers=6, width=8, sim_latency_ms=150)
    planned = RunPlanned(run_id="run-f", tenant="t", goal="g", plan=plan, source=PlanSource.EXPLICIT, submitted_at=utc_now())
    # The first dispatcher reports progress once, then never again: what it finished is not reported when it stops.
    quiet = DispatcherSettings(nats=nats_settings, progress_interval_s=3600)
    settings = DispatcherSettings(nats=nats_settings, progress_interval_s=0.05)
    async with (
        gateway(bus),
        service(worker_main, WorkerSettings(nats=nats_settings, concurrency=8)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        async with service(dispatcher_main, quiet):
            await bus.publish(Subjects.run_event("t", "run-f", "planned"), planned, msg_id="run-f.planned")
            await asyncio.sleep(0.5)  # two or three of the six layers
        async with service(dispatcher_main, settings):
            await SwarmClient(bus).wait("run-f", "t", timeout_s=60)
    named: set[str] = set()
    checked = 0
    async for event in SwarmClient(bus).events("run-f", "t"):
        if isinstance(event, RunProgress):
            named.update(event.finished_step_ids)
            assert len(named) == event.steps_succeeded + event.steps_failed, (sorted(named), event)
            checked += 1
    assert checked >= 3 and named <= {s.id for s in plan.steps} and len(named) > 8  # past the first layer
