"""loadtest.peers, the parts without Ray: the plan as Ray tasks, the figures, the side-by-side table."""

from __future__ import annotations

import pytest

from loadtest.peers.bench import SETTINGS, problems, side_by_side
from loadtest.peers.plan import combine, peer_steps, run_figures
from loadtest.scenarios import DEFAULT_INSTRUCTION_CHARS, PLAN_BUILDERS, chain_plan, fanout_plan


def test_each_step_is_submitted_after_its_dependencies_and_an_agent_keeps_its_actor() -> None:
    load = SETTINGS[1].load(seed=0, scale_steps=0.1)
    steps = peer_steps(load, actors=4)
    assert steps[0].step_id == "s0" and not steps[0].depends_on
    assert sorted(s.step_id for s in steps) == sorted(s.id for s in load.plan.steps)
    seen: set[str] = set()
    for step in steps:
        assert set(step.depends_on) <= seen, step.step_id
        seen.add(step.step_id)
    actor_of_agent: dict[str, set[int]] = {}
    agent_of = {s.id: s.agent_id for s in load.plan.steps}
    for step in steps:
        actor_of_agent.setdefault(agent_of[step.step_id], set()).add(step.actor)
    assert all(len(actors) == 1 for actors in actor_of_agent.values())
    assert {a for actors in actor_of_agent.values() for a in actors} == {0, 1, 2, 3}
    assert {s.step_id: s.latency_s for s in steps} == load.latency_s
    assert {s.step_id: s.depends_on for s in steps} == load.depends_on


def test_both_engines_get_the_plan_swarm_loadtest_builds() -> None:
    for setting in SETTINGS:
        ours = setting.load(seed=5, scale_steps=0.1)
        theirs = PLAN_BUILDERS["swarm-300x4000"](5, setting.latency_scale, 0.1, DEFAULT_INSTRUCTION_CHARS, setting.median_ms)
        assert ours.plan == theirs.plan
    assert all(v == 0 for v in SETTINGS[0].load(0, 0.1).latency_s.values())


def test_figures_are_the_ideal_makespan_over_the_makespan_and_count_each_step_once() -> None:
    load = chain_plan(3, latency_scale=1.0, median_ms=100.0)  # a chain: the ideal makespan is the sum
    ideal = sum(load.latency_s.values())
    figures = run_figures(load, ["s0", "s1", "s2"], makespan_s=ideal * 2)
    assert figures["critical_path_s"] == round(ideal, 3) and figures["efficiency"] == pytest.approx(0.5, abs=1e-3)
    assert figures["steps_per_s"] == round(3 / (ideal * 2), 1) and figures["steps_lost"] == 0
    assert run_figures(load, ["s0", "s2"], 1.0)["steps_lost"] == 1  # s1 never came back
    assert run_figures(load, ["s0", "s1", "s1", "s2"], 1.0)["steps_lost"] == 1  # s1 counted twice
    zero = fanout_plan(4, latency_scale=0.0)
    assert run_figures(zero, [f"s{i}" for i in range(5)], 0.01)["efficiency"] is None  # no bound at zero latency


def test_runs_combine_to_medians_and_the_table_sets_engines_side_by_side() -> None:
    runs = [{"status": "completed", "steps_lost": 0, "steps_per_s": v, "makespan_s": 4000 / v} for v in (900.0, 1000.0, 2000.0)]
    combined = combine(runs)
    assert combined["steps_per_s"] == 1000.0 and len(combined["runs"]) == 3
    results = {
        "Swarm": {"latency 0": combined, "median 200 ms": {"status": "completed", "efficiency": 0.95, "steps_lost": 0}},
        "Ray": {"latency 0": {"status": "completed", "steps_per_s": 2100.0}, "median 1 s": {"status": "timeout"}},
    }
    table = side_by_side(results, runs=3)
    assert [c.header for c in table.columns] == ["", "Swarm", "Ray"]
    cells = {label: (swarm, ray) for label, swarm, ray in zip(*(c._cells for c in table.columns), strict=True)}
    assert cells["steps/s at zero latency"] == ("1,000.0", "2,100.0")
    assert cells["efficiency at 200 ms median"] == ("0.950", "—")
    assert problems(results) == ["Ray median 1 s: timeout"]
    assert problems({"Ray": {"latency 0": {"status": "completed", "steps_lost": 2}}}) == ["Ray latency 0: 2 steps lost"]
