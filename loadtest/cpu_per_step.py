"""CPU per step by service: `python -m loadtest.cpu_per_step [--runs 3] [--median-ms 200] [--json FILE]`.

Starts the embedded stack (sim backend, 2 workers x 256, as `swarm loadtest` does), then per run: reads
every service process's CPU time (user + system, /proc; nats-server included), drives one scenario from
a separate process (`swarm loadtest --nats-url ...`, so the driver's own CPU is not counted), waits until
the recorder has stored every event, and reads the CPU times again. Prints ms of CPU per step by service,
the median of the runs. At zero latency by default; `--median-ms` gives the steps latencies of that
median (short agent turns), where a step's messages no longer come in bursts and cost more each.

CPU time, not a rate: on a busy shared machine a rate measures the neighbours, CPU time much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest.runner import LoadtestOptions, _environment, cpu_seconds, embedded_environment, open_deployment
from swarm.client import SwarmClient
from swarm.settings import NatsSettings

QUIET_TIMEOUT_S = 120.0


async def _wait_recorded(nats_url: str) -> None:
    """Until the recorder's consumer has nothing pending nor unacked (every event is in ClickHouse)."""
    client = await SwarmClient.connect(NatsSettings(url=nats_url))
    try:
        with contextlib.suppress(TimeoutError):  # as before: a recorder that never catches up is measured anyway
            await client.wait_recorded(QUIET_TIMEOUT_S, poll_s=0.2)
    finally:
        await client.close()


def measure(options: LoadtestOptions, runs: int, console: Console) -> dict[str, Any]:
    """Start the stack, run the scenario `runs` times, return ms of CPU per step by service (medians)."""
    with _environment(embedded_environment(options)):
        deployment = open_deployment(options, console)
    try:
        pids = deployment.pids()
        per_run: list[dict[str, float]] = []
        for i in range(runs):
            asyncio.run(_wait_recorded(deployment.nats_url))
            time.sleep(1.0)  # settle: checkpoints and acks of the run before
            before = cpu_seconds(pids)
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                command = [
                    sys.executable, "-m", "swarm.ops.cli", "loadtest", "--scenario", options.scenario,
                    "--latency-scale", str(options.latency_scale), "--nats-url", deployment.nats_url,
                    "--no-floor", "--no-targets", "--seed", str(options.seed + i), "--json", out.name,
                    *(["--median-ms", str(options.median_ms)] if options.median_ms else []),
                ]  # fmt: skip
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                report = json.loads(Path(out.name).read_text())
            asyncio.run(_wait_recorded(deployment.nats_url))
            after = cpu_seconds(pids)
            steps = int(report["steps_total"])
            if report.get("steps_lost"):
                raise SystemExit(f"run {i + 1}: {report['steps_lost']} steps lost")
            ms = {name: (after.get(name, 0.0) - spent) * 1000 / steps for name, spent in before.items()}
            ms["total"] = sum(ms.values())
            ms["steps_per_s"] = float(report.get("steps_per_s") or 0.0)
            per_run.append(ms)
            console.print(f"run {i + 1}: {steps} steps, " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()))
    finally:
        deployment.close()
    names = list(per_run[0])
    return {
        "scenario": options.scenario, "latency_scale": options.latency_scale, "median_ms": options.median_ms,
        "runs": per_run,
        "cpu_ms_per_step": {name: round(statistics.median(r[name] for r in per_run), 3) for name in names},
    }  # fmt: skip


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="swarm-300x4000")
    parser.add_argument("--latency-scale", type=float, default=0.0)
    parser.add_argument("--median-ms", type=float, help="median step latency (implies --latency-scale 1)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--home", type=Path, default=Path(".swarm/cpu-per-step"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console()
    latency_scale = 1.0 if args.median_ms else args.latency_scale
    options = LoadtestOptions(
        scenario=args.scenario, latency_scale=latency_scale, median_ms=args.median_ms, workers=args.workers,
        home=args.home, floor=False,
    )  # fmt: skip
    result = measure(options, args.runs, console)
    latency = f"median step {args.median_ms:g} ms" if args.median_ms else f"latency scale {latency_scale:g}"
    table = Table(title=f"CPU ms per step, {args.scenario}, {latency} (median of {args.runs})")
    table.add_column("service")
    table.add_column("ms/step", justify="right")
    for name, value in sorted(result["cpu_ms_per_step"].items(), key=lambda item: -item[1]):
        table.add_row(name, f"{value:.3f}" if name != "steps_per_s" else f"{value:.0f} steps/s")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
