"""`swarm loadtest` end to end: an embedded stack, a shrunk fan-out scenario at zero latency, the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.floor import RESULTS_STREAM, STEPS_STREAM, measure_floor
from swarm.bus import Bus

pytestmark = pytest.mark.integration

REQUIRED_KEYS = {
    "scenario", "run_ids", "steps_total", "steps_succeeded", "steps_failed", "steps_lost", "makespan_s",
    "critical_path_s", "efficiency", "steps_per_s", "step_latency_ms", "raw_floor_steps_per_s", "floor_ratio",
    "latency_scale", "machine", "started_at", "finished_at",
}  # fmt: skip


@pytest.mark.slow
def test_loadtest_runs_a_small_fanout_and_exits_1_on_an_impossible_target(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "swarm.ops.cli", "loadtest", "--scenario", "fanout-300", "--scale-steps", "0.1",
         "--latency-scale", "0", "--home", str(tmp_path / "home"), "--json", str(report_file), "--timeout-s", "60",
         "--target-floor-ratio", "1000"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    # The run itself went well; only the impossible target fails it, and the error names it.
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "floor_ratio" in done.stderr and "below its target 1000" in done.stderr, done.stderr[-2000:]
    assert "steps lost" not in done.stderr and "efficiency" not in done.stderr
    report = json.loads(report_file.read_text())
    assert report["targets"]["floor_ratio"] == 1000
    assert REQUIRED_KEYS <= set(report)
    assert report["steps_total"] == 31 and report["steps_succeeded"] == 31 and report["steps_lost"] == 0
    assert report["critical_path_s"] == 0 and report["efficiency"] is None  # no latency, no bound
    assert report["steps_per_s"] > 0 and report["raw_floor_steps_per_s"] > 0 and report["floor_ratio"] > 0
    assert set(report["step_latency_ms"]) == {"p50", "p99"} and report["step_latency_ms"]["p50"] is not None
    assert len(report["run_ids"]) == 1 and report["machine"]["cpu_count"] >= 1
    assert "makespan (s)" in done.stdout
    assert not (tmp_path / "home" / "stack.json").exists()  # the embedded stack was stopped


async def test_floor_measures_a_round_trip_and_removes_its_streams(bus: Bus) -> None:
    url = bus.settings.url
    result = await measure_floor(url, steps=300, in_flight=50, payload_bytes=1024)
    assert result.steps == 300 and result.steps_per_s > 0 and result.round_trip_p50_ms is not None
    names = {info.config.name for info in await bus.js.streams_info()}
    assert not names & {STEPS_STREAM, RESULTS_STREAM}
