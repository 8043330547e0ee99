"""`swarm loadtest` end to end: an embedded stack, a shrunk fan-out scenario at zero latency, the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import bricks
from loadtest.floor import RESULTS_STREAM, STEPS_STREAM, clean_nats, measure_floor, measure_floor_in_processes
from swarm.bus import Bus
from swarm.ops.natsserver import NatsServer

pytestmark = pytest.mark.integration

REQUIRED_KEYS = {
    "scenario", "run_ids", "steps_total", "steps_succeeded", "steps_failed", "steps_lost", "makespan_s",
    "critical_path_s", "efficiency", "steps_per_s", "step_latency_ms", "clean_floor_steps_per_s",
    "deployment_floor_steps_per_s", "floor_ratio", "deployment_floor_ratio", "floor_ratio_basis", "latency_scale", "machine", "started_at", "finished_at",
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
    # ClickHouse holds every step event EVENTS holds (queued, started, inference done, succeeded), each end once.
    assert report["events_recorded"] >= 4 * 31 and report["events_not_recorded"] == 0
    assert report["step_ends_recorded_twice"] == 0 and "step events missing in ClickHouse" in done.stdout
    assert report["steps_per_s"] > 0 and report["clean_floor_steps_per_s"] > 0 and report["deployment_floor_steps_per_s"] > 0
    # floor_ratio is over the clean floor (a fresh server like the deployment's), and the report says so.
    # (The ratios are of the unrounded rates; the report shows the rates to 0.1 steps/s.)
    assert report["floor_ratio"] == pytest.approx(report["steps_per_s"] / report["clean_floor_steps_per_s"], abs=1e-3)
    assert report["deployment_floor_ratio"] == pytest.approx(
        report["steps_per_s"] / report["deployment_floor_steps_per_s"], abs=1e-3
    )
    assert report["floor_ratio_basis"].startswith("floor_ratio = steps_per_s / clean_floor_steps_per_s")
    clean, deployed = report["clean_floor"], report["deployment_floor"]
    assert clean["server_version"] == deployed["server_version"] and clean["stream_storage"] == deployed["stream_storage"]
    assert "clean floor (steps/s)" in done.stdout and "deployment floor (steps/s)" in done.stdout
    assert set(report["step_latency_ms"]) == {"p50", "p99"} and report["step_latency_ms"]["p50"] is not None
    assert len(report["run_ids"]) == 1 and report["machine"]["cpu_count"] >= 1
    assert "makespan (s)" in done.stdout
    assert not (tmp_path / "home" / "stack.json").exists()  # the embedded stack was stopped
    assert not list((tmp_path / "home").glob("clean-floor-*"))  # and so was the clean floor's server


async def test_floor_measures_a_round_trip_and_removes_its_streams(bus: Bus) -> None:
    url = bus.settings.url
    result = await measure_floor(url, steps=300, in_flight=50, payload_bytes=1024)
    assert result.steps == 300 and result.steps_per_s > 0 and result.round_trip_p50_ms is not None
    names = {info.config.name for info in await bus.js.streams_info()}
    assert not names & {STEPS_STREAM, RESULTS_STREAM}


async def test_floor_runs_in_its_own_processes_on_a_fresh_server(nats_server: NatsServer, tmp_path: Path) -> None:
    parent = tmp_path / "clean"
    with clean_nats(parent=parent) as url:
        assert url != nats_server.url
        clean = await measure_floor_in_processes(url, steps=200, in_flight=50)
    deployed = await measure_floor_in_processes(nats_server.url, steps=200, in_flight=50)
    assert clean.steps == deployed.steps == 200 and clean.steps_per_s > 0 and deployed.steps_per_s > 0
    assert clean.server_version == deployed.server_version != ""  # the same binary
    assert clean.stream_storage == "file" and clean.stream_replicas == 1
    assert os.listdir(parent) == []  # the fresh server's store is gone


async def test_bricks_measure_each_piece_of_a_hop_on_their_own() -> None:
    result = await bricks.measure(samples=10, gateway="inprocess", gateway_s=0.5)
    for brick in ("core_request_reply", "jetstream_publish"):  # through a fresh server, from another process
        assert result[brick]["samples"] == 10 and 0 < result[brick]["p50_ms"] <= result[brick]["p90_ms"]
    assert result["timer_lateness"]["samples"] == 10
    assert result["timer_lateness"]["p50_ms"] <= result["timer_lateness"]["p90_ms"]
    call = result["gateway_call"]
    assert call["samples"] > 0 and call["errors"] == {} and call["p50_ms"] > 0
    decode = result["dispatch_decode_cpu"]  # CPU µs of one decode and encode, however the machine wakes
    for setting in ("back_to_back", "first_after_a_pause", "ten_after_a_pause"):
        assert decode[setting]["samples"] == 10 and 0 < decode[setting]["p50_us"] <= decode[setting]["p90_us"]
