"""Load-test plans: sizes, valid DAGs, realistic instructions (by reference when large), deterministic; the registry."""

from __future__ import annotations

from collections import Counter

import pytest

from loadtest.scenarios import (
    DEFAULT_INSTRUCTION_CHARS,
    PLAN_BUILDERS,
    SCENARIOS,
    build_chain,
    build_fanout,
    build_faults,
    build_swarm,
    load_all,
    scenario,
    swarm_plan,
    wide_plan,
)
from swarm.contracts import (
    MESSAGE_BODY_MAX_BYTES,
    PLAN_INLINE_MAX_BYTES,
    PlanSource,
    RunPlanned,
    RunPolicy,
    TaskSubmission,
    utc_now,
)
from swarm.dag import longest_chain, sinks, validate_plan

RUN_ID = "lt-swarm-300x4000-20260101-000000-abcdef"  # as long as the runner's ids get


@pytest.mark.parametrize("name", sorted(PLAN_BUILDERS))
def test_every_plan_is_a_valid_dag_within_the_limits(name: str) -> None:
    load = PLAN_BUILDERS[name](0, 1.0, 1.0, DEFAULT_INSTRUCTION_CHARS)
    validate_plan(load.plan)
    assert max(len(s.depends_on) for s in load.plan.steps) <= 300


@pytest.mark.parametrize("chars", [40, 300, 1000])
def test_instructions_have_the_asked_length(chars: int) -> None:
    load = build_chain(0, 1.0, 0.05, chars)
    assert {len(s.instruction) for s in load.plan.steps} == {chars}
    assert {len(a.instructions) for a in load.plan.agents} == {chars}
    assert len({s.instruction for s in load.plan.steps}) == len(load.plan.steps)  # each names its step


def test_zero_instruction_chars_keeps_one_word() -> None:
    load = build_chain(0, 1.0, 0.05, 0)
    assert {s.instruction for s in load.plan.steps} == {"refine"}
    assert {a.instructions for a in load.plan.agents} == {""}


def test_the_headline_plan_with_300_character_instructions_travels_by_reference() -> None:
    """300 agents / 4,000 steps at 300 characters: over the inline budget, and far over one message."""
    load = build_swarm(0, 1.0, 1.0, 300)
    assert (len(load.plan.agents), len(load.plan.steps)) == (300, 4000)
    assert all(len(s.instruction) == 300 for s in load.plan.steps)
    size = len(load.plan.model_dump_json())
    assert size > MESSAGE_BODY_MAX_BYTES > PLAN_INLINE_MAX_BYTES
    # With the plan by reference, what travels is small (the SDK and the planner make that swap).
    from swarm.payloads import plan_bytes, plan_ref_of

    ref = plan_ref_of(plan_bytes(load.plan))
    task = TaskSubmission(run_id=RUN_ID, plan_ref=ref, policy=load.policy)
    planned = RunPlanned(
        run_id=RUN_ID, tenant="default", goal="explicit plan: 300 agents, 4000 steps", plan_ref=ref,
        agents_count=300, steps_count=4000, source=PlanSource.EXPLICIT, submitted_at=utc_now(),
    )  # fmt: skip
    assert len(task.model_dump_json()) < 1000 and len(planned.model_dump_json()) < 1000


def test_sizes_of_the_named_scenarios() -> None:
    fanout, chain, swarm = build_fanout(0, 1.0), build_chain(0, 1.0), build_swarm(0, 1.0)
    assert (len(fanout.plan.agents), len(fanout.plan.steps)) == (300, 301)
    assert sinks(fanout.depends_on) == ["s300"] and len(fanout.depends_on["s300"]) == 300
    assert len(chain.plan.steps) == 200 and longest_chain(chain.depends_on, chain.latency_s)[1] == list(chain.depends_on)
    assert (len(swarm.plan.agents), len(swarm.plan.steps)) == (300, 4000)


def test_swarm_plan_has_multi_turn_agents_fan_out_and_fan_in() -> None:
    load = build_swarm(0, 1.0)
    turns = Counter(s.agent_id for s in load.plan.steps)
    assert len(turns) == 300 and min(turns.values()) >= 10  # every agent takes many turns
    fan_out = Counter(d for s in load.plan.steps for d in s.depends_on)
    assert fan_out["s0"] >= 300  # the scope step feeds every agent
    assert max(len(s.depends_on) for s in load.plan.steps) <= 20  # depends_on lists stay short
    assert sum(1 for s in load.plan.steps if len(s.depends_on) >= 10) >= 20  # team merges (fan-in)
    assert sinks(load.depends_on) == ["s3999"]  # one final report
    length, path = longest_chain(load.depends_on, load.latency_s)
    assert 15 <= len(path) <= 30 and length > 0


def test_plans_are_deterministic_per_seed() -> None:
    for build in (build_fanout, build_chain, build_swarm, build_faults):
        assert build(7, 1.0).plan == build(7, 1.0).plan
        assert build(7, 1.0).plan != build(8, 1.0).plan


def test_latency_scale_multiplies_latencies_and_keeps_the_dag() -> None:
    one, half, zero = build_swarm(3, 1.0), build_swarm(3, 0.5), build_swarm(3, 0.0)
    assert one.depends_on == half.depends_on == zero.depends_on
    assert all(v == 0 for v in zero.latency_s.values())
    for step_id, latency in one.latency_s.items():
        assert half.latency_s[step_id] == pytest.approx(latency / 2, abs=1e-4)
    median_ms = sorted(one.latency_s.values())[2000] * 1000
    assert 700 < median_ms < 1400  # ~1 s median, like the sim backend's own default


@pytest.mark.parametrize("name", sorted(PLAN_BUILDERS))
def test_median_ms_sets_the_median_step_latency_and_keeps_the_dag(name: str) -> None:
    default, short = PLAN_BUILDERS[name](3, 1.0, 0.25, 0, None), PLAN_BUILDERS[name](3, 1.0, 0.25, 0, 200.0)
    assert default.depends_on == short.depends_on
    latencies = sorted(short.latency_s.values())
    assert 0.15 < latencies[len(latencies) // 2] < 0.27  # a log-normal draw around 200 ms
    # The same seeded draws, rescaled: each step's latency keeps its rank.
    ratios = {round(short.latency_s[s] / default.latency_s[s], 2) for s in short.latency_s if default.latency_s[s] > 0.01}
    assert len(ratios) <= 2


def test_faults_mark_five_percent_half_each_and_use_quorum() -> None:
    load = build_faults(0, 1.0)
    assert len(load.faults) == 200
    assert Counter(load.faults.values()) == {"fail_once": 100, "garbage": 100}
    assert {s.id: s.sim_fault for s in load.plan.steps if s.sim_fault} == load.faults
    assert load.policy is RunPolicy.QUORUM
    assert load.depends_on == build_swarm(0, 1.0).depends_on


def test_scaled_down_plans_stay_valid() -> None:
    for build in (build_fanout, build_chain, build_swarm, build_faults):
        load = build(0, 0.0, 0.05)
        validate_plan(load.plan)
        assert 2 <= len(load.plan.steps) <= 1000


def test_swarm_plan_counts_exactly_and_rejects_impossible_shapes() -> None:
    for n_steps in (700, 1234, 2999):
        assert len(swarm_plan(100, n_steps, teams=10).plan.steps) == n_steps
    with pytest.raises(ValueError):
        swarm_plan(300, 100)


def test_registry_has_the_plan_scenarios_and_refuses_a_second_registration() -> None:
    registry = load_all()
    assert {"fanout-300", "chain-200", "swarm-300x4000", "faults-5pct"} <= set(registry)
    assert all(registry[name].description for name in registry)

    async def other(ctx: object) -> dict[str, object]:
        return {}

    with pytest.raises(ValueError, match="twice"):
        scenario("fanout-300", "again")(other)  # type: ignore[arg-type]
    assert SCENARIOS["fanout-300"].run is not other


def test_the_fair_share_plan_is_4000_steps_all_but_21_ready_at_once() -> None:
    load = wide_plan(4000, instruction_chars=300)
    validate_plan(load.plan)  # depends_on within the contract's 500
    assert (len(load.plan.agents), len(load.plan.steps)) == (300, 4000)
    assert sum(1 for s in load.plan.steps if not s.depends_on) == 3979
    assert sinks(load.depends_on) == ["report"]
