"""What the python tool's sandbox adds to one call: `print(1)` through bwrap versus the same run with no boundary.

    python -m loadtest.sandbox_cost --runs 200
    swarm loadtest --scenario sandbox-cost

Both modes run the same interpreter with the same limits, one call at a time; the figures are the wall-clock
time of `PythonSandbox.run` as the worker sees it (process start to exit, output read), p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from loadtest.metrics import latency_summary
from loadtest.scenarios import scenario
from services.worker_pool.settings import SandboxMode
from services.worker_pool.tools.sandbox import PythonSandbox, SandboxLimits, unavailable_reason

CODE = "print(1)"


async def call_ms(sandbox: PythonSandbox, runs: int) -> list[float]:
    """The duration of each of `runs` sequential calls, in ms (after two warm-up calls)."""
    durations = []
    for i in range(runs + 2):
        started = time.perf_counter()
        run = await sandbox.run(CODE)
        if not run.ok or run.stdout != "1\n":
            raise RuntimeError(f"the sandboxed run failed: {run}")
        if i >= 2:
            durations.append((time.perf_counter() - started) * 1000)
    return durations


async def run_sandbox_cost(runs: int = 200) -> dict[str, Any]:
    """p50/p99 of a trivial call with bwrap and with no sandbox, and what bwrap adds at the median."""
    limits = SandboxLimits()
    if (reason := unavailable_reason(limits.user)) is not None:
        raise RuntimeError(reason)
    # Interleaved halves, so that a burst of load on a shared machine hits both modes alike.
    bwrap, bare = PythonSandbox(limits, 1, SandboxMode.BWRAP), PythonSandbox(limits, 1, SandboxMode.UNSAFE_NONE)
    bwrap_ms: list[float] = []
    bare_ms: list[float] = []
    sandbox_log = logging.getLogger("services.worker_pool.tools.sandbox")
    level = sandbox_log.level
    sandbox_log.setLevel(logging.ERROR)  # unsafe-none warns on every run, by design: not here
    try:
        for _ in range(2):
            bwrap_ms += await call_ms(bwrap, runs // 2)
            bare_ms += await call_ms(bare, runs // 2)
    finally:
        sandbox_log.setLevel(level)
    with_bwrap, without = latency_summary(bwrap_ms), latency_summary(bare_ms)
    added = (with_bwrap["p50"] or 0.0) - (without["p50"] or 0.0)
    return {
        "runs_per_mode": len(bwrap_ms),
        "bwrap_p50_ms": with_bwrap["p50"],
        "bwrap_p99_ms": with_bwrap["p99"],
        "no_sandbox_p50_ms": without["p50"],
        "no_sandbox_p99_ms": without["p99"],
        "bwrap_added_p50_ms": round(added, 2),
    }


@scenario(
    "sandbox-cost",
    "The python tool's sandbox: p50/p99 of print(1) through bwrap versus no sandbox",
    needs_deployment=False,
    measures_floor=False,
)
async def sandbox_cost_scenario(ctx: Any) -> dict[str, Any]:
    """`swarm loadtest --scenario sandbox-cost`: no stack needed."""
    return await run_sandbox_cost(runs=max(20, int(200 * ctx.options.scale_steps)))


def main() -> None:
    """`python -m loadtest.sandbox_cost`: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="calls per mode")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run_sandbox_cost(args.runs)), indent=2))


if __name__ == "__main__":
    main()
