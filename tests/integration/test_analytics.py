"""Analytics, dashboards and the run report on data from a REAL run.

One module-scoped run: nats-server, the recorder (real chdb), the sim gateway, dispatcher, worker
pool and aggregator in process. The plan has a fan-out, a reduce, a straggler and a step whose
prompt crashes the engine (failed, retried, dead-lettered; the quorum policy lets the run finish).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from services.aggregator.__main__ import main as aggregator_main
from services.aggregator.settings import AggregatorSettings
from services.dispatcher.__main__ import main as dispatcher_main
from services.dispatcher.settings import DispatcherSettings
from services.gateway.backends import create_engine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from services.recorder.service import run_recorder
from services.recorder.settings import RecorderSettings
from services.worker_pool.__main__ import main as worker_main
from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus
from swarm.client import SwarmClient
from swarm.contracts import (
    AgentSpec,
    Plan,
    PlanSource,
    RunCompleted,
    RunPlanned,
    RunPolicy,
    StepSpec,
    Subjects,
    utc_now,
)
from swarm.ops.analytics import analyze_run, cross_run_stats, expand_grafana_macros, recorder_query
from swarm.ops.natsserver import NatsServer
from swarm.ops.queries import query_via_recorder
from swarm.ops.report import render_html
from swarm.settings import ClickHouseSettings, NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GRAFANA = Path(__file__).parents[2] / "compose" / "grafana"
CRASH = "CRASH-THE-ENGINE"
RUN_ID = "run-analytics"


def analytics_plan() -> Plan:
    """scope -> 10 map steps (one straggler, one crashing) -> 2 reduce steps -> final."""
    agents = (*(AgentSpec(id=f"analyst-{i}", role="analyst") for i in range(5)), AgentSpec(id="lead", role="editor"))
    steps = [StepSpec(id="scope", agent_id="lead", instruction="Scope.", sim_latency_ms=40)]
    for i in range(10):
        latency = 1500 if i == 3 else 40 + 5 * i  # map-3 dwarfs any scheduling noise of a busy machine
        text = f"Part {i}." + (f" {CRASH}" if i == 7 else "")
        steps.append(StepSpec(id=f"map-{i}", agent_id=f"analyst-{i % 5}", instruction=text, depends_on=("scope",),
                              sim_latency_ms=latency, max_attempts=2))  # fmt: skip
    for r in range(2):
        deps = tuple(f"map-{i}" for i in range(r * 5, r * 5 + 5))
        steps.append(StepSpec(id=f"reduce-{r}", agent_id="lead", instruction="Combine.", depends_on=deps, sim_latency_ms=60))
    steps.append(StepSpec(id="final", agent_id="lead", instruction="Conclude.", depends_on=("reduce-0", "reduce-1"),
                          sim_latency_ms=50))  # fmt: skip
    return Plan(agents=agents, steps=tuple(steps))


@dataclass
class RecordedRun:
    bus: Bus
    run_id: str
    plan: Plan
    started: datetime
    finished: datetime


async def _service(main: Any, settings: Any, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(main(stop, settings))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def recorded(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RecordedRun]:
    tmp = tmp_path_factory.mktemp("analytics")
    server = NatsServer(store_dir=tmp / "nats", log_file=tmp / "nats.log").start()
    nats_settings = NatsSettings(url=server.url)
    bus = await Bus.connect(nats_settings, "test")
    await bus.provision()
    stop = asyncio.Event()
    recorder_settings = RecorderSettings(
        nats=nats_settings, clickhouse=ClickHouseSettings(path=tmp / "clickhouse", database="swarm"),
        batch_max_ms=50, fetch_timeout_s=0.2, model_prices={"*": [0.5, 1.5]},
    )  # fmt: skip
    tasks = [asyncio.create_task(run_recorder(recorder_settings, stop))]
    gateway_settings = GatewaySettings(backend="sim", sim_latency_scale=1.0, sim_crash_marker=CRASH)
    engine = create_engine(gateway_settings)
    gateway = GatewayServer(bus, engine, gateway_settings)
    await gateway.start()
    tasks += [
        await _service(dispatcher_main, DispatcherSettings(nats=nats_settings, retry_base_s=0.05), stop),
        await _service(worker_main, WorkerSettings(nats=nats_settings, concurrency=8), stop),
        await _service(aggregator_main, AggregatorSettings(nats=nats_settings), stop),
    ]
    try:
        plan = analytics_plan()
        started = utc_now()
        planned = RunPlanned(run_id=RUN_ID, tenant="acme", goal="analytics test", plan=plan,
                             source=PlanSource.EXPLICIT, submitted_at=started, policy=RunPolicy.QUORUM, quorum=0.8)  # fmt: skip
        await bus.publish(Subjects.run_event("acme", RUN_ID, "planned"), planned, msg_id=f"{RUN_ID}.planned")
        final = await SwarmClient(bus).wait(RUN_ID, "acme", timeout_s=90)
        assert isinstance(final, RunCompleted), final
        await _wait_recorded(bus)
        yield RecordedRun(bus=bus, run_id=RUN_ID, plan=plan, started=started, finished=utc_now())
    finally:
        stop.set()
        await gateway.stop()
        await engine.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await bus.close()
        server.stop()


async def _wait_recorded(bus: Bus) -> None:
    """Until the final step's success and the run's row are in ClickHouse."""
    for _ in range(200):
        rows = await query_via_recorder(
            bus.nc,
            "SELECT (SELECT count() FROM step_events FINAL WHERE run_id = {r:String} AND kind = 'succeeded' "
            "AND step_id = 'final') AS done, (SELECT count() FROM runs FINAL WHERE run_id = {r:String} "
            "AND status = 'completed') AS run_done, (SELECT count() FROM inference_calls) AS calls",
            {"r": RUN_ID},
        )
        if rows[0]["done"] and rows[0]["run_done"] and rows[0]["calls"]:
            await asyncio.sleep(0.3)  # the gateway's last inference events
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the run was not recorded")


# --------------------------------------------------------------------------- analytics


async def test_run_analysis_answers_the_questions(recorded: RecordedRun) -> None:
    analysis = await analyze_run(recorder_query(recorded.bus.nc), recorded.run_id)
    assert analysis.run["status"] == "completed"
    assert {s.step_id for s in analysis.steps} == {s.id for s in recorded.plan.steps}
    # The critical path: scope -> the straggler map-3 -> reduce-0 (waits for map-3) -> final.
    assert analysis.critical_path[0] == "scope" and analysis.critical_path[-1] == "final"
    assert "map-3" in analysis.critical_path
    assert 0 < analysis.lower_bound_ms <= analysis.critical_path_ms <= analysis.makespan_ms * 1.001
    assert analysis.peak_concurrency >= 2
    assert "map-3" in [s["step_id"] for s in analysis.stragglers]
    reasons = {(f["kind"], f["steps_count"]) for f in analysis.failures}
    assert ("dead_lettered", 1) in reasons and ("failed", 1) in reasons
    assert any(CRASH in f["reason"] or "inference" in f["reason"] for f in analysis.failures)
    agents = {t["agent_id"] for t in analysis.tokens}
    assert {"lead", "analyst-0"} <= agents
    assert sum(t["cost_usd"] for t in analysis.tokens) > 0
    # The synthesis call has no step: it is the aggregator's, not an agent "(none)".
    assert ("synthesis", "aggregator") in {(t["phase"], t["agent_id"]) for t in analysis.tokens}
    assert [t.phase for t in analysis.token_totals] == ["steps", "synthesis"]  # an explicit plan: no planning call
    assert analysis.running_ms_total > 0 and analysis.queued_ms_total >= 0


async def test_cross_run_stats(recorded: RecordedRun) -> None:
    stats = await cross_run_stats(recorder_query(recorded.bus.nc), window_s=3600)
    assert stats["runs_count"] == 1 and stats["success_rate"] == 1.0
    assert stats["steps_succeeded"] >= 13 and stats["steps_per_s"] > 0
    assert stats["step_ms_p50"] is not None and stats["step_ms_p99"] >= stats["step_ms_p50"]
    assert stats["inference_calls"] >= 14 and stats["tokens_per_s_p50"] > 0


async def test_html_report_of_a_real_run(recorded: RecordedRun, tmp_path: Path) -> None:
    analysis = await analyze_run(recorder_query(recorded.bus.nc), recorded.run_id, bus=recorded.bus)
    final = await SwarmClient(recorded.bus).wait(recorded.run_id, "acme", timeout_s=5)
    assert isinstance(final, RunCompleted) and analysis.answer == final.answer
    assert set(analysis.outputs) == {s.id for s in recorded.plan.steps} - {"map-7"}  # map-7 was dead-lettered
    html = render_html(analysis)
    assert "<svg" in html and "map-3" in html and "critical" in html.lower()
    assert html.index(html_escape(final.answer)) < html.index("<h2>Summary</h2>")
    assert html_escape(analysis.outputs["map-3"]) in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    (tmp_path / "report.html").write_text(html)


# --------------------------------------------------------------------------- dashboards


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("targets")]


def _dashboards() -> list[Path]:
    return sorted((GRAFANA / "dashboards").glob("*.json"))


async def test_three_dashboards_are_provisioned() -> None:
    names = {json.loads(p.read_text())["title"] for p in _dashboards()}
    assert names == {"Swarm overview", "Swarm run drill-down", "Swarm inference gateway"}


@pytest.mark.parametrize("model", ["$__all", "sim"])
async def test_every_panel_query_returns_rows(recorded: RecordedRun, model: str) -> None:
    start, end = recorded.started - timedelta(minutes=5), recorded.finished + timedelta(minutes=5)
    variables = {"run_id": recorded.run_id, "tenant": "acme", "model": model}
    checked = []
    for path in _dashboards():
        dashboard = json.loads(path.read_text())
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                sql = expand_grafana_macros(_query_text(variable["query"]), start, end, 5, variables)
                rows = await query_via_recorder(recorded.bus.nc, sql)
                assert rows, f"{path.name}: variable {variable['name']} has no values"
        for panel in _panels(dashboard):
            for target in panel["targets"]:
                sql = expand_grafana_macros(target["rawSql"], start.astimezone(UTC), end, 5, variables)
                rows = await query_via_recorder(recorded.bus.nc, sql)
                assert rows, f"{path.name}: panel {panel['title']!r} returned no rows:\n{sql}"
                checked.append(panel["title"])
    assert len(checked) >= 20


async def test_critical_path_panel_matches_the_python_analysis(recorded: RecordedRun) -> None:
    dashboard = json.loads((GRAFANA / "dashboards" / "swarm-run.json").read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Critical path"]
    now = utc_now()
    sql = expand_grafana_macros(panel["targets"][0]["rawSql"], now, now, 1, {"run_id": recorded.run_id})
    rows = await query_via_recorder(recorded.bus.nc, sql)
    analysis = await analyze_run(recorder_query(recorded.bus.nc), recorded.run_id)
    assert [r["step_id"] for r in rows] == analysis.critical_path


def _query_text(query: str | dict[str, Any]) -> str:
    return query if isinstance(query, str) else str(query.get("rawSql") or query.get("query"))
