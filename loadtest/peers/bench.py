"""`python -m loadtest.peers`: Swarm and Ray on the same swarm-300x4000 plan, side by side, from one command.

Three settings, each `--runs` times (figures are medians): zero latency (steps/s), and log-normal step
latencies of 200 ms and 1 s median (efficiency = ideal critical-path makespan / makespan). Swarm runs
through `swarm loadtest` (an embedded stack, sim backend) in a child process, then Ray in this one, one
after the other so neither shares the machine with the other. Exits 1 when either lost a step or a run did
not complete.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.peers.plan import combine, peer_steps, run_figures
from loadtest.runner import machine_info
from loadtest.scenarios import DEFAULT_INSTRUCTION_CHARS, PlanLoad, build_swarm

SCENARIO = "swarm-300x4000"


@dataclass(frozen=True)
class Setting:
    """One row group of the comparison: the latency of the steps."""

    name: str
    latency_scale: float
    median_ms: float | None

    def load(self, seed: int, scale_steps: float) -> PlanLoad:
        """The plan both engines run: what `swarm loadtest --scenario swarm-300x4000` builds with these options."""
        return build_swarm(seed, self.latency_scale, scale_steps, DEFAULT_INSTRUCTION_CHARS, self.median_ms)


SETTINGS = (Setting("latency 0", 0.0, None), Setting("median 200 ms", 1.0, 200.0), Setting("median 1 s", 1.0, 1000.0))


def run_swarm(setting: Setting, runs: int, seed: int, scale_steps: float, home: Path) -> dict[str, Any]:
    """`swarm loadtest` in a child process (it prints its own table); its JSON report."""
    with tempfile.TemporaryDirectory() as scratch:
        report_file = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "swarm.ops.cli", "loadtest", "--scenario", SCENARIO, "--runs", str(runs),
            "--seed", str(seed), "--scale-steps", str(scale_steps), "--latency-scale", str(setting.latency_scale),
            "--instruction-chars", str(DEFAULT_INSTRUCTION_CHARS), "--no-floor", "--no-targets",
            "--home", str(home), "--json", str(report_file),
        ]  # fmt: skip
        if setting.median_ms is not None:
            command += ["--median-ms", str(setting.median_ms)]
        done = subprocess.run(command, check=False)
        if not report_file.exists():
            return {"status": "failed", "error": f"swarm loadtest exited with {done.returncode} without a report"}
        return json.loads(report_file.read_text())


def run_ray(
    settings: Sequence[Setting], runs: int, seed: int, scale_steps: float, actors: int, max_concurrency: int,
    console: Console,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The same plans on one local Ray instance, `runs` times each; setting -> combined figures."""
    from loadtest.peers.ray_engine import RayEngine  # ray is the `peers` extra: imported only when Ray runs

    engine = RayEngine(actors, max_concurrency)
    results = {}
    try:
        engine.run(peer_steps(SETTINGS[0].load(seed, 0.05), actors))  # warm-up: workers and actors up, not measured
        for setting in settings:
            console.rule(f"ray: {SCENARIO}, {setting.name}, {runs} run(s)")
            load = setting.load(seed, scale_steps)
            steps = peer_steps(load, actors)
            figures = []
            for _ in range(runs):
                completed, makespan_s = engine.run(steps)
                figures.append({"status": "completed", **run_figures(load, completed, makespan_s)})
                console.print(f"makespan {makespan_s:.3f} s")
            results[setting.name] = combine(figures)
    finally:
        engine.close()
    return results


ROWS = (  # (label, setting, figure)
    ("steps/s at zero latency", "latency 0", "steps_per_s"),
    ("makespan at zero latency (s)", "latency 0", "makespan_s"),
    ("efficiency at 200 ms median", "median 200 ms", "efficiency"),
    ("makespan at 200 ms median (s)", "median 200 ms", "makespan_s"),
    ("efficiency at 1 s median", "median 1 s", "efficiency"),
    ("makespan at 1 s median (s)", "median 1 s", "makespan_s"),
    ("ideal makespan at 200 ms / 1 s (s)", "", "critical_path_s"),
    ("steps lost (all runs)", "", "steps_lost"),
)


def side_by_side(results: dict[str, dict[str, dict[str, Any]]], runs: int) -> Table:
    """The comparison table: one column per engine; `results` is engine -> setting -> figures."""
    table = Table(title=f"{SCENARIO}: Swarm and Ray (4 async actors x 100), medians of {runs} run(s)")
    table.add_column("")
    for engine in results:
        table.add_column(engine, justify="right")
    for label, setting, key in ROWS:
        table.add_row(label, *(_cell(by_setting, setting, key) for by_setting in results.values()))
    table.caption = "efficiency = ideal makespan (the critical path of the step latencies) / makespan"
    return table


def _cell(by_setting: dict[str, dict[str, Any]], setting: str, key: str) -> str:
    if key == "steps_lost":
        return str(sum(int(r.get("steps_lost") or 0) for r in by_setting.values()))
    if key == "critical_path_s":
        return " / ".join(_number(by_setting.get(s, {}).get(key)) for s in ("median 200 ms", "median 1 s"))
    return _number(by_setting.get(setting, {}).get(key))


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}"


def problems(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Steps lost, runs that did not complete and (Swarm) step events the event log lacks, by engine and setting."""
    found = []
    for engine, by_setting in results.items():
        for setting, figures in by_setting.items():
            for run in figures.get("runs", [figures]):
                if run.get("status") != "completed":
                    found.append(f"{engine} {setting}: {run.get('status')} {run.get('error', '')}".rstrip())
            if figures.get("steps_lost"):
                found.append(f"{engine} {setting}: {figures['steps_lost']} steps lost")
            if figures.get("events_not_recorded") or figures.get("step_ends_recorded_twice"):  # Swarm's event log
                found.append(f"{engine} {setting}: {figures.get('events_not_recorded')} step events not in "
                             f"ClickHouse, {figures.get('step_ends_recorded_twice')} step ends there twice")  # fmt: skip
    return found


def main(argv: list[str] | None = None) -> int:
    """Run both engines and print them side by side; 1 when a step was lost or a run did not complete."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="Runs per engine and setting; the figures are medians.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale-steps", type=float, default=1.0, help="Shrink the plan (smoke tests).")
    parser.add_argument("--engines", default="swarm,ray", help="Comma-separated: swarm, ray.")
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--max-concurrency", type=int, default=100)
    parser.add_argument("--home", type=Path, default=Path(".swarm/loadtest"), help="Swarm's embedded stack's home.")
    parser.add_argument("--json", type=Path, help="Write every figure to this JSON file.")
    args = parser.parse_args(argv)
    console = Console()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for engine in engines:
        if engine == "swarm":
            results["Swarm"] = swarm = {}
            for setting in SETTINGS:
                console.rule(f"swarm: {SCENARIO}, {setting.name}, {args.runs} run(s)")
                swarm[setting.name] = run_swarm(setting, args.runs, args.seed, args.scale_steps, args.home)
        elif engine == "ray":
            results["Ray"] = run_ray(
                SETTINGS, args.runs, args.seed, args.scale_steps, args.actors, args.max_concurrency, console
            )
        else:
            parser.error(f"unknown engine {engine!r} (swarm, ray)")
    console.print(side_by_side(results, args.runs))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"scenario": SCENARIO, "runs": args.runs, "seed": args.seed, "scale_steps": args.scale_steps,
                  "ray": {"actors": args.actors, "max_concurrency": args.max_concurrency}, "machine": machine_info(),
                  "results": results}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        console.print(f"Figures written to {args.json}")
    missed = problems(results)
    for problem in missed:
        console.print(f"[red]{problem}[/red]")
    return 1 if missed else 0
