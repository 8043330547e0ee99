"""Every pattern template yields a valid plan, for any agent count and any sane limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.planner.templates import TEMPLATES, excerpt, instantiate, pattern_for_goal, plan_around
from swarm.contracts import PlanPattern
from swarm.dag import PlanLimits, sinks, topological_order, validate_plan

GOALS = st.text(min_size=1, max_size=600).filter(lambda g: g.strip())


@settings(max_examples=60, deadline=None)
@given(pattern=st.sampled_from(list(PlanPattern)), n_agents=st.integers(1, 300), goal=GOALS)
def test_templates_are_valid_plans(pattern: PlanPattern, n_agents: int, goal: str) -> None:
    plan = instantiate(pattern, goal, n_agents)
    validate_plan(plan)
    assert plan.pattern is pattern
    assert len(plan.agents) <= n_agents + 1  # parallel agents plus at most one coordinator


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.sampled_from(list(PlanPattern)),
    n_agents=st.integers(1, 400),
    max_agents=st.integers(2, 50),
    max_steps=st.integers(3, 80),
    max_depends_on=st.integers(2, 20),
    fan_in=st.integers(2, 32),
)
def test_templates_respect_tight_limits(
    pattern: PlanPattern, n_agents: int, max_agents: int, max_steps: int, max_depends_on: int, fan_in: int
) -> None:
    limits = PlanLimits(max_agents=max_agents, max_steps=max_steps, max_depends_on=max_depends_on)
    validate_plan(instantiate(pattern, "write a report on solar power", n_agents, limits, fan_in), limits)


@pytest.mark.parametrize("n_agents", [1, 2, 5, 16, 17, 300])
def test_map_reduce_ends_in_one_synthesis_of_every_aspect(n_agents: int) -> None:
    plan = instantiate(PlanPattern.MAP_REDUCE, "compare three databases", n_agents)
    graph = {s.id: s.depends_on for s in plan.steps}
    assert sinks(graph) == ["synthesize"]
    researchers = [a for a in plan.agents if a.role == "researcher"]
    assert len(researchers) == min(n_agents, 299)  # the synthesizer is agent 300
    assert all(s.depends_on == () for s in plan.steps if s.id.startswith("research-"))
    assert all(len(deps) <= 16 for deps in graph.values())  # many outputs are reduced in a tree


def test_pipeline_is_a_chain() -> None:
    plan = instantiate(PlanPattern.PIPELINE, "write a short story", 6)
    order = topological_order({s.id: s.depends_on for s in plan.steps})
    assert order == [f"stage-{i}" for i in range(1, 7)]
    assert plan.agents[0].role == "researcher" and plan.agents[-1].role == "editor"


def test_vote_has_independent_answers_and_a_judge() -> None:
    plan = instantiate(PlanPattern.VOTE, "what is 17 * 23?", 5)
    judge = next(s for s in plan.steps if s.id == "judge")
    assert set(judge.depends_on) == {f"answer-{i}" for i in range(1, 6)}
    assert {a.role for a in plan.agents} == {"solver", "judge"}


def test_map_has_no_reduce_step() -> None:
    plan = instantiate(PlanPattern.MAP, "list uses of graphene", 3)
    assert len(plan.steps) == 3 and all(not s.depends_on for s in plan.steps)


def test_instructions_quote_the_goal_briefly() -> None:
    goal = "design a city " * 500
    plan = instantiate(PlanPattern.MAP_REDUCE, goal, 3)
    assert all("design a city" in s.instruction and len(s.instruction) < 1000 for s in plan.steps)
    assert excerpt("a\n b\t c") == "a b c"


def test_every_pattern_has_a_template() -> None:
    assert set(TEMPLATES) == set(PlanPattern)


@pytest.mark.parametrize(
    ("goal", "pattern"),
    [("Compare solar, wind and hydro power in Germany, Spain and Norway", PlanPattern.MAP_REDUCE),
     ("Which programming language should a beginner learn first?", PlanPattern.VOTE),
     ("Choose a name for a bakery", PlanPattern.VOTE),
     ("Write a short report on the 2008 financial crisis, then edit it", PlanPattern.PIPELINE),
     ("Draft a project plan for a garden shed", PlanPattern.PIPELINE),
     ("Explain how vaccines train the immune system", PlanPattern.MAP_REDUCE)],
)  # fmt: skip
def test_the_goals_wording_picks_the_dag(goal: str, pattern: PlanPattern) -> None:
    assert pattern_for_goal(goal) is pattern


def test_plan_around_proposed_agents_fits_the_limits_and_validates() -> None:
    proposed = [(f"role {i}", f"Answer part {i} of the goal.") for i in range(10)]
    for pattern in PlanPattern:
        plan = plan_around(pattern, "a goal", proposed, PlanLimits(max_agents=5, max_steps=6), fan_in=3)
        validate_plan(plan, PlanLimits(max_agents=5, max_steps=6))
        assert plan.pattern is pattern and plan.steps[0].instruction == "Answer part 0 of the goal."
