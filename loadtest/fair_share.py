"""Scenario `fair-share`: a small run of one tenant next to a 4,000-step run of another, against each alone.

Four runs, one after the other, then together: the small run alone, the big run alone, then the big
run again with the small one submitted a quarter of the way into it. Fair share holds when the small
run's makespan stays within 1.5x of its makespan alone, and the big run keeps at least 90% of its solo
throughput (steps/s over its makespan). The two ratios are targets of the load test (`Targets`): a miss
fails `swarm loadtest` unless --no-targets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loadtest.runner import ScenarioContext, wait_until_quiet
from loadtest.scenarios import fanout_plan, scenario, wide_plan
from swarm.contracts import RunEventKind

BIG_TENANT = "tenant-big"
SMALL_TENANT = "tenant-small"
BIG_STEPS = 4000
SMALL_STEPS = 20
START_AFTER = 0.25  # of the big run's solo makespan: the small run arrives while the big one fills the pool


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


@scenario(
    "fair-share",
    "A tenant's 4,000-step run, and another tenant's 20-step run started later: each against its solo figures.",
    measures_floor=False,
)
async def fair_share(ctx: ScenarioContext) -> dict[str, Any]:
    """Small alone, big alone, then both (small submitted a quarter into the big one)."""
    # Wider than any worker pool here (3,979 independent turns of 300 agents, 20 partial reduces, a report):
    # the big run alone keeps every slot busy, so the small one gets slots only if they are handed out fairly.
    big = wide_plan(
        ctx.scaled(BIG_STEPS, 50), seed=ctx.seed, latency_scale=ctx.latency_scale,
        instruction_chars=ctx.options.instruction_chars, median_ms=ctx.options.median_ms or 1000.0,
    )  # fmt: skip
    # 19 parallel turns and a reduce: a makespan of about two step latencies when it gets slots at once.
    small = fanout_plan(
        SMALL_STEPS - 1, seed=ctx.seed + 1, latency_scale=ctx.latency_scale, instruction_chars=ctx.options.instruction_chars,
        median_ms=ctx.options.median_ms or 1000.0,
    )  # fmt: skip
    assert ctx.client is not None
    small_alone = await ctx.run_plan(small, tenant=SMALL_TENANT)
    await wait_until_quiet(ctx.client, ctx.progress)
    big_alone = await ctx.run_plan(big, tenant=BIG_TENANT)
    await wait_until_quiet(ctx.client, ctx.progress)

    async def small_later() -> dict[str, Any]:
        await asyncio.sleep(START_AFTER * (big_alone["makespan_s"] or 0.0))
        return await ctx.run_plan(small, tenant=SMALL_TENANT)

    big_shared, small_shared = await asyncio.gather(ctx.run_plan(big, tenant=BIG_TENANT), small_later())
    small_ratio = _ratio(small_shared["makespan_s"], small_alone["makespan_s"])
    big_ratio = _ratio(big_shared["steps_per_s"], big_alone["steps_per_s"])
    goals = ctx.options.targets
    met = small_ratio is not None and small_ratio <= goals.small_makespan_ratio
    met = met and big_ratio is not None and big_ratio >= goals.big_throughput_ratio
    runs = {"small_alone": small_alone, "big_alone": big_alone, "big_shared": big_shared, "small_shared": small_shared}
    return {
        "run_id": big_shared["run_id"],
        "status": next((r["status"] for r in runs.values() if r["status"] != RunEventKind.COMPLETED), RunEventKind.COMPLETED),
        "error": next((f"{name}: {r['error']}" for name, r in runs.items() if r["status"] != RunEventKind.COMPLETED), ""),
        "steps_total": sum(r["steps_total"] for r in runs.values()),
        "steps_succeeded": sum(r["steps_succeeded"] for r in runs.values()),
        "steps_failed": sum(r["steps_failed"] for r in runs.values()),
        "steps_lost": sum(r["steps_lost"] for r in runs.values()),
        "small_makespan_alone_s": small_alone["makespan_s"],
        "small_makespan_shared_s": small_shared["makespan_s"],
        "small_makespan_ratio": small_ratio,
        "big_steps_per_s_alone": big_alone["steps_per_s"],
        "big_steps_per_s_shared": big_shared["steps_per_s"],
        "big_throughput_ratio": big_ratio,
        "fair_share_targets": {
            "small_makespan_ratio_max": goals.small_makespan_ratio, "big_throughput_ratio_min": goals.big_throughput_ratio
        },
        "fair_share_met": met,
        "run_ids_by_role": {name: r["run_id"] for name, r in runs.items()},
    }
