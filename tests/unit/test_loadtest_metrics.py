"""Load-test figures: percentiles, the critical-path bound, efficiency, step accounting, several runs combined."""

from __future__ import annotations

import pytest

from loadtest.metrics import (
    StepAccounting,
    combine_runs,
    critical_path_s,
    efficiency,
    latency_summary,
    percentile,
    ratio,
    steps_lost,
)
from loadtest.runner import LoadtestOptions, Targets, embedded_environment, failed_targets, report_table
from swarm.contracts import StepEvent, StepEventKind, step_event_id


def event(step_id: str, kind: StepEventKind, attempt: int = 1, duration_ms: float = 0.0) -> StepEvent:
    return StepEvent(
        event_id=step_event_id("r1", step_id, attempt, kind), run_id="r1", tenant="t", step_id=step_id,
        attempt=attempt, kind=kind, duration_ms=duration_ms,
    )  # fmt: skip


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(list(reversed(values)), 0) == 1.0
    assert latency_summary([10.0, 20.0, 30.0]) == {"p50": 20.0, "p99": pytest.approx(29.8)}


def test_critical_path_is_the_longest_chain_of_latencies() -> None:
    depends_on = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    assert critical_path_s(depends_on, {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0}) == 7.0
    assert critical_path_s(depends_on, {}) == 0.0


def test_efficiency_and_ratios_are_null_without_a_bound() -> None:
    assert efficiency(9.5, 10.0) == pytest.approx(0.95)
    assert efficiency(0.0, 10.0) is None  # zero latency: no lower bound to compare with
    assert efficiency(5.0, None) is None
    assert ratio(100.0, 400.0) == 0.25
    assert ratio(None, 400.0) is None and ratio(1.0, 0.0) is None


def test_accounting_counts_one_terminal_event_per_step_and_flags_the_rest() -> None:
    accounting = StepAccounting()
    for e in (
        event("s1", StepEventKind.QUEUED),
        event("s1", StepEventKind.SUCCEEDED, duration_ms=12.0),
        event("s1", StepEventKind.SUCCEEDED, duration_ms=12.0),  # redelivered event: same id, counted once
        event("s2", StepEventKind.FAILED),
        event("s2", StepEventKind.RETRIED, attempt=2),
        event("s2", StepEventKind.SUCCEEDED, attempt=2, duration_ms=30.0),
        event("s3", StepEventKind.SUCCEEDED, duration_ms=1.0),
        event("s3", StepEventKind.DEAD_LETTERED),  # two outcomes for one step
        event("s5", StepEventKind.CANCELLED),
    ):
        accounting.add(e)
    assert accounting.latencies_ms == [12.0, 30.0, 1.0]
    assert accounting.unaccounted(["s1", "s2", "s3", "s4", "s5"]) == ["s3", "s4"]
    assert accounting.faulted == {"s2", "s3"} and accounting.retried == 1


def test_steps_lost_takes_the_worse_of_summary_and_events() -> None:
    assert steps_lost(100, 95, 3, 2, 0) == 0
    assert steps_lost(100, 95, 3, 0, 0) == 2
    assert steps_lost(100, 100, 0, 0, 4) == 4


def test_combine_runs_sums_counts_and_takes_medians() -> None:
    runs = [
        {"scenario": "x", "status": "completed", "steps_total": 10, "steps_lost": 0, "makespan_s": 1.0,
         "efficiency": None, "step_latency_ms": {"p50": 1.0, "p99": 9.0}},
        {"scenario": "x", "status": "completed", "steps_total": 10, "steps_lost": 1, "makespan_s": 3.0,
         "efficiency": 0.9, "step_latency_ms": {"p50": 2.0, "p99": 7.0}},
        {"scenario": "x", "status": "completed", "steps_total": 10, "steps_lost": 0, "makespan_s": 2.0,
         "efficiency": 0.8, "step_latency_ms": {"p50": 3.0, "p99": 8.0}},
    ]  # fmt: skip
    combined = combine_runs(runs)
    assert combined["steps_total"] == 30 and combined["steps_lost"] == 1
    assert combined["makespan_s"] == 2.0 and combined["efficiency"] == pytest.approx(0.85)
    assert combined["step_latency_ms"] == {"p50": 2.0, "p99": 8.0}
    assert combined["status"] == "completed"
    assert combine_runs(runs[:1]) == runs[0]


def test_report_table_and_failed_targets() -> None:
    report = {"scenario": "fanout-300", "latency_scale": 0.0, "status": "completed", "steps_total": 301,
              "steps_lost": 0, "makespan_s": 1.5, "step_latency_ms": {"p50": 3.0, "p99": None}, "events_per_s": 9.0}  # fmt: skip
    table = report_table(report)
    labels = list(table.columns[0].cells)
    assert "makespan (s)" in labels and "events_per_s" in labels and "step latency p99 (ms)" not in labels
    assert failed_targets(report) == []
    assert failed_targets({**report, "steps_lost": 2}) == ["2 steps lost"]
    assert "timeout" in failed_targets({**report, "status": "timeout", "run_id": "r"})[0]
    assert "failed" in failed_targets({**report, "status": "failed", "run_id": "r"})[0]


def test_targets_name_every_figure_that_misses() -> None:
    report = {"status": "completed", "steps_lost": 0, "efficiency": 0.9, "floor_ratio": 0.6}
    assert failed_targets(report) == []  # without targets: only lost steps and unfinished runs
    assert failed_targets(report, Targets()) == ["efficiency 0.9 below its target 0.95"]
    assert failed_targets({**report, "efficiency": None}, Targets()) == []  # no bound at zero latency: not checked
    assert failed_targets(report, Targets(efficiency=0.8, floor_ratio=0.7)) == ["floor_ratio 0.6 below its target 0.7"]
    gateway = {"added_latency_ms": {"p50": 3.5}, "errors": {"timeout": 2}}
    assert [p.split(" ")[0] for p in failed_targets(gateway, Targets())] == ["gateway", "gateway"]
    recorder = {"events_per_s": 1000, "events_lost": 3}
    assert failed_targets(recorder, Targets()) == [
        "events_per_s 1000 below its target 20000", "3 events lost by the recorder"
    ]


def test_embedded_stack_takes_latencies_from_the_steps() -> None:
    env = embedded_environment(LoadtestOptions("swarm-300x4000", latency_scale=0.5, workers=2, worker_concurrency=256))
    assert env["SWARM_GATEWAY_SIM_LATENCY_SCALE"] == "1"  # the steps carry base x scale already
    assert int(env["SWARM_GATEWAY_MAX_QUEUE"]) >= 512  # the gateway admits what the workers run at once
    assert embedded_environment(LoadtestOptions("x", latency_scale=0))["SWARM_GATEWAY_SIM_LATENCY_SCALE"] == "0"


def test_fair_share_ratios_are_targets() -> None:
    shared = {"status": "completed", "steps_lost": 0, "small_makespan_ratio": 2.1, "big_throughput_ratio": 0.8}
    assert failed_targets(shared) == []  # --no-targets: reported only
    assert failed_targets(shared, Targets()) == [
        "big_throughput_ratio 0.8 below its target 0.9", "small_makespan_ratio 2.1 above its target 1.5"
    ]
    fair = {**shared, "small_makespan_ratio": 1.2, "big_throughput_ratio": 0.95}
    assert failed_targets(fair, Targets()) == []
    assert failed_targets(fair, Targets(small_makespan_ratio=1.1)) == ["small_makespan_ratio 1.2 above its target 1.1"]


def test_summary_names_each_setting_and_shows_both_floors() -> None:
    from loadtest.summary import setting, summary_table

    zero = {"scenario": "swarm-300x4000", "latency_scale": 0.0, "steps_per_s": 2500.0, "clean_floor_steps_per_s": 10000.0,
            "deployment_floor_steps_per_s": 5000.0, "floor_ratio": 0.25, "deployment_floor_ratio": 0.5, "steps_lost": 0}  # fmt: skip
    short = {"scenario": "swarm-300x4000", "latency_scale": 1.0, "median_ms": 200.0, "efficiency": 0.97}
    assert setting(zero) == "swarm-300x4000, latency 0" and setting(short) == "swarm-300x4000, median 200 ms"
    table = summary_table({"bench-latency0.json": zero, "bench-200ms.json": short})
    by_header = {c.header: list(c._cells) for c in table.columns}
    assert by_header["clean floor"] == ["10,000.0", "—"] and by_header["deployment floor"] == ["5,000.0", "—"]
    assert by_header["ratio to clean floor"] == ["0.250", "—"] and by_header["ratio to deployment floor"] == ["0.500", "—"]
    assert by_header["efficiency"] == ["—", "0.970"] and by_header["lost"] == ["0", "—"]
