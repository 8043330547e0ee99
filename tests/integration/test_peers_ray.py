"""loadtest.peers on a real Ray (the `peers` extra, installed by `make install`): a tiny plan, every step once,
dependencies honoured. Ray's start-up takes ~10 s, so one engine serves every case here."""

from __future__ import annotations

import pytest

from loadtest.peers.plan import peer_steps, run_figures
from loadtest.peers.ray_engine import RayEngine
from loadtest.scenarios import chain_plan, fanout_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ray_runs_a_plan_with_dependencies_as_object_refs() -> None:
    engine = RayEngine(actors=2, max_concurrency=10)
    try:
        # A chain of 4 steps of ~50 ms: were its dependencies ignored, the steps would overlap and end at once.
        chain = chain_plan(4, median_ms=50.0, n_agents=2)
        completed, makespan_s = engine.run(peer_steps(chain, actors=2))
        figures = run_figures(chain, completed, makespan_s)
        assert sorted(completed) == ["s0", "s1", "s2", "s3"] and figures["steps_lost"] == 0
        assert makespan_s >= sum(chain.latency_s.values()) and 0 < figures["efficiency"] <= 1
        # A fan-out wider than the actors' concurrency, then a reduce over every result.
        fanout = fanout_plan(30, latency_scale=0.0, n_agents=5)
        completed, makespan_s = engine.run(peer_steps(fanout, actors=2))
        assert sorted(completed) == sorted(s.id for s in fanout.plan.steps)
        assert run_figures(fanout, completed, makespan_s)["steps_lost"] == 0
    finally:
        engine.close()
