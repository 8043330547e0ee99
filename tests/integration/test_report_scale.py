"""`swarm report` of a 4,000-step, 300-agent run: the recorder's answers are paged, the report carries the content.

The run's events are written into the real ClickHouse engine (chdb) as the recorder would have recorded
them; its outputs are in the real outputs bucket (one of them by reference, in the object store) and its
answer is a RunCompleted on RUNS. A real recorder answers the queries over a real nats-server, and the
real CLI (`python -m swarm.ops.cli report`) writes the terminal and HTML reports.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from services.recorder.service import run_recorder
from services.recorder.settings import MIGRATIONS_DIR, RecorderSettings
from swarm.bus import Bus
from swarm.contracts import (
    InferenceEvent,
    Keys,
    RunCompleted,
    RunSummary,
    StepEvent,
    StepEventKind,
    Subjects,
    step_event_id,
)
from swarm.eventlog import EventLog
from swarm.ops.analytics import analyze_run, recorder_query
from swarm.ops.natsserver import NatsServer
from swarm.ops.queries import query_via_recorder
from swarm.ops.report import render_html
from swarm.payloads import Payloads
from swarm.settings import ClickHouseSettings, NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

RUN_ID = "run-4000"
TENANT = "acme"
AGENTS = 300
STEPS = 4000
WAVE_S = 1.0  # step i runs in wave i // AGENTS, one agent per lane
ANSWER = "Norway leads in hydro; Spain in solar; Germany in wind. <script>alert(1)</script>"
BIG_STEP = "s0042"  # its output goes to the object store by reference


def step_ids() -> list[str]:
    return [f"s{i:04d}" for i in range(STEPS - 1)] + ["final"]


def deps_of(i: int) -> list[str]:
    """Each agent's steps form a chain; the final step waits for the last wave."""
    if i == STEPS - 1:
        return [f"s{j:04d}" for j in range(STEPS - 1 - AGENTS, STEPS - 1)]
    return [f"s{i - AGENTS:04d}"] if i >= AGENTS else []


def output_of(step_id: str) -> str:
    body = f"Output of {step_id}: findings about energy in Europe. " * 4
    return body * 400 if step_id == BIG_STEP else body


@dataclass
class BigRun:
    bus: Bus
    url: str
    summary: RunSummary
    planning_tokens: tuple[int, int]
    synthesis_tokens: tuple[int, int]


def write_events(settings: ClickHouseSettings, t0: datetime) -> tuple[RunSummary, tuple[int, int], tuple[int, int]]:
    """The run as the recorder records it: step transitions, plan edges, inference calls, the run row."""
    events: list[StepEvent] = []
    calls: list[InferenceEvent] = []
    plan_rows = []
    ids = step_ids()
    for i, step_id in enumerate(ids):
        agent = "lead" if step_id == "final" else f"agent-{i % AGENTS:03d}"
        wave = (i // AGENTS) + (1 if step_id == "final" else 0)  # the final step waits for the last wave
        queued = t0 + timedelta(seconds=wave * WAVE_S)
        started = queued + timedelta(milliseconds=5 + (i % 7))
        run_ms = 800.0 + (i % 13) * 10
        plan_rows.append((RUN_ID, step_id, agent, deps_of(i)))
        for kind, at, extra in (
            (StepEventKind.QUEUED, queued, {}),
            (StepEventKind.STARTED, started, {"worker_id": "w1"}),
            (StepEventKind.SUCCEEDED, started + timedelta(milliseconds=run_ms),
             {"duration_ms": run_ms, "prompt_tokens": 50, "completion_tokens": 20, "worker_id": "w1"}),
        ):  # fmt: skip
            events.append(StepEvent(event_id=step_event_id(RUN_ID, step_id, 1, kind), run_id=RUN_ID, tenant=TENANT,
                                    step_id=step_id, agent_id=agent, kind=kind, at=at, **extra))  # fmt: skip
        calls.append(InferenceEvent(event_id=f"call-{step_id}", run_id=RUN_ID, step_id=step_id, caller="worker",
                                    model="sim", backend="sim", ok=True, prompt_tokens=50, completion_tokens=20,
                                    duration_ms=run_ms, at=started + timedelta(milliseconds=run_ms)))  # fmt: skip
    end = t0 + timedelta(seconds=(STEPS // AGENTS + 3) * WAVE_S)
    calls.append(InferenceEvent(event_id="call-plan", run_id=RUN_ID, caller="planner", model="sim", backend="sim",
                                ok=True, prompt_tokens=300, completion_tokens=700, at=t0))  # fmt: skip
    for j in range(3):
        calls.append(InferenceEvent(event_id=f"call-synth-{j}", run_id=RUN_ID, caller="aggregator", model="sim",
                                    backend="sim", ok=True, prompt_tokens=400, completion_tokens=100, at=end))  # fmt: skip
    summary = RunSummary(agents_count=AGENTS + 1, steps_total=STEPS, steps_succeeded=STEPS, steps_failed=0,
                         retries_count=0, prompt_tokens=STEPS * 50 + 1200, completion_tokens=STEPS * 20 + 300,
                         wall_ms=(end - t0).total_seconds() * 1000)  # fmt: skip
    run_row = {
        "run_id": RUN_ID, "tenant": TENANT, "status": "completed", "goal": "Compare energy in Europe", "error": "",
        "agents_count": summary.agents_count, "steps_total": STEPS, "steps_succeeded": STEPS, "steps_failed": 0,
        "steps_cancelled": 0, "retries": 0, "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens, "submitted_at": t0, "finished_at": end,
        "wall_ms": summary.wall_ms, "version": 10,
    }  # fmt: skip
    with EventLog.open(settings, MIGRATIONS_DIR) as eventlog:
        eventlog.insert_step_events(events)
        eventlog.insert_inference_events(calls)
        eventlog.insert_plan_steps(plan_rows)
        eventlog.insert_runs([run_row])
    return summary, (300, 700), (1200, 300)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def big_run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BigRun]:
    tmp = tmp_path_factory.mktemp("report-scale")
    server = NatsServer(store_dir=tmp / "nats", log_file=tmp / "nats.log").start()
    nats_settings = NatsSettings(url=server.url)
    clickhouse = ClickHouseSettings(path=tmp / "clickhouse", database="swarm")
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    summary, planning, synthesis = await asyncio.to_thread(write_events, clickhouse, t0)
    bus = await Bus.connect(nats_settings, "test")
    await bus.provision()
    stop = asyncio.Event()
    recorder = asyncio.create_task(run_recorder(RecorderSettings(nats=nats_settings, clickhouse=clickhouse), stop))
    try:
        payloads = Payloads(bus)
        ids = step_ids()
        for start in range(0, len(ids), 500):
            await asyncio.gather(*(payloads.put(Keys.output(TENANT, RUN_ID, s), output_of(s).encode()) for s in ids[start:start + 500]))
        completed = RunCompleted(run_id=RUN_ID, tenant=TENANT, answer=ANSWER, summary=summary)
        await bus.publish(Subjects.run_event(TENANT, RUN_ID, "completed"), completed, f"{RUN_ID}.completed")
        for _ in range(100):  # until the recorder answers
            try:
                await query_via_recorder(bus.nc, "SELECT 1 AS one", timeout_s=1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        yield BigRun(bus=bus, url=server.url, summary=summary, planning_tokens=planning, synthesis_tokens=synthesis)
    finally:
        stop.set()
        await asyncio.wait_for(recorder, 30)
        await bus.close()
        server.stop()


async def test_a_query_larger_than_one_reply_comes_back_whole(big_run: BigRun) -> None:
    rows = await query_via_recorder(
        big_run.bus.nc, "SELECT * FROM step_events WHERE run_id = {r:String} ORDER BY event_id", {"r": RUN_ID}
    )
    assert len(rows) == 3 * STEPS
    assert len({r["event_id"] for r in rows}) == 3 * STEPS


async def test_analysis_of_4000_steps(big_run: BigRun) -> None:
    analysis = await analyze_run(recorder_query(big_run.bus.nc), RUN_ID, bus=big_run.bus)
    assert len(analysis.steps) == STEPS
    assert analysis.critical_path[-1] == "final" and len(analysis.critical_path) == (STEPS - 2) // AGENTS + 2
    assert analysis.peak_concurrency == AGENTS
    assert analysis.answer == ANSWER
    assert len(analysis.outputs) == STEPS
    assert analysis.outputs[BIG_STEP].startswith(output_of(BIG_STEP)[:200])
    by_phase = {t.phase: t for t in analysis.token_totals}
    assert (by_phase["planning"].prompt_tokens, by_phase["planning"].completion_tokens) == big_run.planning_tokens
    assert (by_phase["synthesis"].prompt_tokens, by_phase["synthesis"].completion_tokens) == big_run.synthesis_tokens
    assert by_phase["steps"].calls_count == STEPS
    # What the follow summary counts (steps and synthesis) is what the report calls the run summary.
    assert analysis.summary_tokens == (big_run.summary.prompt_tokens, big_run.summary.completion_tokens)
    assert {t["agent_id"] for t in analysis.tokens if t["phase"] == "planning"} == {"planner"}
    assert {t["agent_id"] for t in analysis.tokens if t["phase"] == "synthesis"} == {"aggregator"}
    html = render_html(analysis)
    assert html.count('class="step"') == STEPS


async def test_swarm_report_and_html_of_4000_steps(big_run: BigRun, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    # A subprocess the event loop waits for: the recorder answering it runs on this loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarm.ops.cli", "report", RUN_ID, "--html", str(out), "--nats-url", big_run.url,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    stdout = (await asyncio.wait_for(process.communicate(), 300))[0].decode()
    assert process.returncode == 0, stdout
    assert f"{STEPS} succeeded of {STEPS}" in stdout
    assert "Norway leads in hydro" in stdout
    html = out.read_text()
    assert "Norway leads in hydro" in html and "<script>alert(1)</script>" not in html
    assert html.count('class="step"') == STEPS
    assert "Output of s3998: findings" in html and "Output of final: findings" in html
    assert f"Output of {BIG_STEP}: findings" in html  # read from the object store
