"""CLI output that fits a terminal: whole run ids at 80 and 120 columns, stats with labels and honest rates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from rich.console import Console

from swarm.client import new_run_id
from swarm.contracts import RunRecord, RunStatus, record_goal
from swarm.ops.cli import runs_table, stats_table, with_rates


def rendered(renderable: object, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(renderable)
    return console.export_text()


def records(n: int, prefix: str = "") -> list[RunRecord]:
    goal = record_goal("Compare solar, wind and hydro power in Germany, Spain and Norway, with\nsources and a table. " * 4)
    return [
        RunRecord(
            run_id=f"{prefix}{new_run_id()}{i}"[:64], tenant="default", status=RunStatus.RUNNING, goal=goal,
            steps_total=4000, agents_count=300, submitted_at=datetime(2026, 11, 30, 19, 4, tzinfo=UTC),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("prefix", ["", "lt-swarm-300x4000-"])  # ids of 24 and 42 characters
def test_runs_table_keeps_whole_run_ids_and_one_line_per_run(width: int, prefix: str) -> None:
    runs = records(3, prefix)
    text = rendered(runs_table(runs, width), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    for run in runs:
        matching = [line for line in lines if run.run_id in line]
        assert len(matching) == 1, text  # the whole id, on the run's one line
        assert "…" in matching[0] and " 300 " in matching[0] and "4000" in matching[0] and "running" in matching[0]
    assert "agents" in text and "steps" in text
    assert "Compare" in text


def test_runs_table_gives_the_goal_the_width_left() -> None:
    narrow = rendered(runs_table(records(1), 80), 80)
    wide = rendered(runs_table(records(1), 120), 120)
    goal_chars = [
        len(next(line for line in text.splitlines() if "Compare" in line).split("Compare")[1]) for text in (narrow, wide)
    ]
    assert goal_chars[1] - goal_chars[0] == 40


def test_stats_rates_say_what_they_divide_by() -> None:
    figures = {
        "window_s": 24 * 3600, "runs_count": 1, "active_count": 0, "runs_per_minute": 1.0, "success_rate": 1.0,
        "steps_succeeded": 5, "steps_per_s": 2.5, "retries_count": 0, "step_ms_p50": 12.5, "step_ms_p95": 40.0,
        "step_ms_p99": None, "inference_calls": 7, "inference_failed": 0, "ttft_ms_p50": 150.0, "ttft_ms_p95": None,
        "ttft_ms_p99": None, "queue_ms_p50": 0.1, "queue_ms_p99": 0.3, "tokens_per_s_p50": 60.0, "cost_usd": 0.0,
        "runs_per_minute_series": [{"minute": "2026-11-30 19:04:00", "runs": 1, "completed": 1}],
    }  # fmt: skip
    rated = with_rates(figures)
    assert "runs_per_minute" not in rated  # the ambiguous figure is not passed on
    assert rated["runs_per_window_minute"] == pytest.approx(1 / 1440, abs=1e-4)
    assert rated["runs_per_active_minute"] == 1.0 and rated["active_minutes"] == 1
    text = rendered(stats_table(rated, 24), 100)
    assert "runs / minute, over the window" in text and "0.0007" in text
    assert "time to first token p50 / p95 / p99 (ms)" in text and "150 / - / -" in text
    assert "run success rate, finished runs (%)" in text and " 100 " in text
    for raw in ("window_s", "runs_count", "step_ms_p50", "ttft_ms_p50"):
        assert raw not in text
