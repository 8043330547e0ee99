"""`python -m loadtest.summary FILE...`: the headline figures of several `swarm loadtest --json` reports, one row each.

`make bench` ends with it: per run setting, steps/s and efficiency, the clean floor (a fresh nats-server),
the deployment floor (the stack's server) and the step rate's ratio to each.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = (  # (report key, header)
    ("steps_per_s", "steps/s"), ("efficiency", "efficiency"), ("clean_floor_steps_per_s", "clean floor"),
    ("deployment_floor_steps_per_s", "deployment floor"), ("floor_ratio", "ratio to clean floor"),
    ("deployment_floor_ratio", "ratio to deployment floor"), ("steps_lost", "lost"),
    ("events_not_recorded", "events not in ClickHouse"), ("step_ends_recorded_twice", "ends twice in ClickHouse"),
)  # fmt: skip


def setting(report: dict[str, Any]) -> str:
    """What a report ran: scenario, latency scale and median step latency."""
    median = report.get("median_ms")
    latency = "latency 0" if not report.get("latency_scale") else f"median {median:g} ms" if median else "the scenario's latencies"
    if report.get("latency_scale") not in (None, 0, 1):
        latency += f" x{report['latency_scale']:g}"
    return f"{report.get('scenario', '?')}, {latency}"


def summary_table(reports: dict[str, dict[str, Any]]) -> Table:
    """One row per report (file name -> report): the figures of COLUMNS, medians over its runs."""
    table = Table(title="swarm loadtest: floors and ratios (medians of each file's runs)")
    table.add_column("run")
    for _, header in COLUMNS:
        table.add_column(header, justify="right")
    for name, report in reports.items():
        cells = [_cell(report.get(key)) for key, _ in COLUMNS]
        table.add_row(f"{setting(report)}\n[dim]{name}[/dim]", *cells)
    table.caption = "floor ratio = steps/s ÷ floor; the target is on the clean floor's ratio, at zero latency only"
    return table


def _cell(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    """Print the summary of the given JSON reports (missing files are skipped with a note)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    console = Console()
    reports = {}
    for path in args.files:
        if path.exists():
            reports[path.name] = json.loads(path.read_text())
        else:
            console.print(f"{path}: no report (that run did not write one)")
    console.print(summary_table(reports))


if __name__ == "__main__":
    main()
