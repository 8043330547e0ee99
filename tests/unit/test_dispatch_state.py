"""The run state machine: dependencies, caps, retries, dead letters, policies, idempotency, checkpoints."""

from __future__ import annotations

import json
import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.dispatcher.scheduling import Scheduler
from services.dispatcher.state import RetryPolicy, RunPhase, RunState, StepPhase
from swarm.contracts import (
    AgentSpec,
    Plan,
    RunPlanned,
    RunPolicy,
    SpawnRequest,
    StepResult,
    StepSpec,
    StepStatus,
    utc_now,
)
from swarm.dag import PlanLimits

NO_BACKOFF = RetryPolicy(base_s=0, cap_s=0)


def planned(edges: dict[str, tuple[str, ...]], policy: RunPolicy = RunPolicy.FAIL_FAST, **step_fields: object) -> RunPlanned:
    steps = tuple(StepSpec(id=s, agent_id="a", instruction="do", depends_on=d, **step_fields) for s, d in edges.items())
    plan = Plan(agents=(AgentSpec(id="a", role="r"),), steps=steps)
    return RunPlanned(run_id="r", tenant="t", goal="g", plan=plan, source="explicit", policy=policy, submitted_at=utc_now())


def result(step: str, attempt: int = 1, ok: bool = True, retryable: bool = True) -> StepResult:
    now = utc_now()
    return StepResult(
        run_id="r", step_id=step, attempt=attempt, status=StepStatus.SUCCEEDED if ok else StepStatus.FAILED,
        error=None if ok else "boom", retryable=retryable, started_at=now, finished_at=now + timedelta(seconds=1),
        worker_id="w", prompt_tokens=3, completion_tokens=5,
    )


def started(run: RunState) -> list[str]:
    run.start()
    return queued(run)


def queued(run: RunState) -> list[str]:
    """Queue every ready step the run's cap allows (the scheduler's job in the dispatcher)."""
    return [d.step_id for d in run.take(10**6)]


def test_steps_dispatch_when_their_dependencies_finish() -> None:
    run = RunState(planned({"a": (), "b": (), "c": ("a", "b")}), max_in_flight=100)
    assert started(run) == ["a", "b"]
    run.apply(result("a"))
    assert queued(run) == []
    run.apply(result("b"))
    assert queued(run) == ["c"]
    outcome = run.apply(result("c"))
    assert outcome.run_finished is RunPhase.EXECUTED
    assert run.sink_step_ids() == ["c"]
    assert run.summary().steps_succeeded == 3 and run.summary().prompt_tokens == 9


def test_duplicate_and_stale_results_change_nothing() -> None:
    run = RunState(planned({"a": (), "b": ("a",)}), max_in_flight=100)
    started(run)
    assert run.apply(result("a")).changed
    assert queued(run) == ["b"]
    again = run.apply(result("a"))
    assert not again.changed and queued(run) == []
    assert not run.apply(result("b", attempt=7)).changed


def test_concurrency_cap_holds_steps_back() -> None:
    run = RunState(planned({f"s{i}": () for i in range(10)}), max_in_flight=3)
    assert len(started(run)) == 3
    run.apply(result("s0"))
    assert len(queued(run)) == 1
    assert run.in_flight == 3


def test_retry_then_dead_letter_fails_a_fail_fast_run() -> None:
    run = RunState(planned({"a": (), "b": ()}, max_attempts=2), max_in_flight=100, retry=NO_BACKOFF)
    started(run)
    first = run.apply(result("a", ok=False))
    assert first.retried == [("a", 2, "boom")] and first.dispatches[0].attempt == 2
    second = run.apply(result("a", attempt=2, ok=False))
    assert second.dead_lettered == [("a", "boom")]
    assert second.run_finished is RunPhase.FAILED and second.cancelled == ["b"]
    assert run.steps["b"].phase is StepPhase.CANCELLED


def test_non_retryable_failure_dead_letters_at_once() -> None:
    run = RunState(planned({"a": ()}, max_attempts=5), max_in_flight=100)
    started(run)
    assert run.apply(result("a", ok=False, retryable=False)).dead_lettered == [("a", "boom")]


def test_quorum_run_survives_a_failed_mapper() -> None:
    edges: dict[str, tuple[str, ...]] = {f"m{i}": () for i in range(20)}
    edges["reduce"] = tuple(edges)
    plan = planned(edges, policy=RunPolicy.QUORUM, max_attempts=1).model_copy(update={"quorum": 0.9})
    run = RunState(plan, max_in_flight=100)
    started(run)
    run.apply(result("m0", ok=False))
    for i in range(1, 20):
        run.apply(result(f"m{i}"))
    assert queued(run) == ["reduce"]
    assert run.apply(result("reduce")).run_finished is RunPhase.EXECUTED
    assert run.failed_step_ids() == ["m0"]


def agents_plan(n_agents: int, turns: int, quorum: float) -> RunPlanned:
    """Each agent takes `turns` turns in a chain (a0.t0 -> a0.t1 -> ...)."""
    agents = tuple(AgentSpec(id=f"a{i}", role=f"role{i}") for i in range(n_agents))
    steps = tuple(
        StepSpec(id=f"a{i}_t{t}", agent_id=f"a{i}", instruction="do", depends_on=(f"a{i}_t{t - 1}",) if t else (),
                 max_attempts=1)
        for i in range(n_agents) for t in range(turns)
    )  # fmt: skip
    return RunPlanned(run_id="r", tenant="t", goal="g", plan=Plan(agents=agents, steps=steps), source="explicit",
                      policy=RunPolicy.QUORUM, quorum=quorum, submitted_at=utc_now())  # fmt: skip


def run_through(run: RunState, failing: set[str]) -> RunPhase | None:
    """Run every step to its end, the `failing` ones failing; the run's final phase."""
    waiting = started(run)
    finished = None
    while waiting:
        step = waiting.pop()
        finished = run.apply(result(step, ok=step not in failing)).run_finished or finished
        waiting += queued(run)
    return finished


def test_the_quorum_counts_agents_whose_final_turn_succeeded_not_steps() -> None:
    # 9 agents recover after a failed early turn: half the steps failed, yet 9 of 10 agents answered.
    run = RunState(agents_plan(10, turns=2, quorum=0.9), max_in_flight=100)
    failing = {f"a{i}_t0" for i in range(9)} | {"a9_t1"}
    assert run_through(run, failing) is RunPhase.EXECUTED
    (missing,) = run.missing_agents()
    assert (missing.agent_id, missing.role, missing.step_id, missing.error) == ("a9", "role9", "a9_t1", "boom")


def test_a_quorum_run_fails_naming_the_missing_agents() -> None:
    run = RunState(agents_plan(10, turns=2, quorum=0.9), max_in_flight=100)
    assert run_through(run, {"a3_t1", "a7_t1"}) is RunPhase.FAILED
    assert [m.agent_id for m in run.missing_agents()] == ["a3", "a7"]
    assert "8 of 10 agents" in run.error and "missing: a3, a7" in run.error


def test_a_cancelled_final_turn_reports_the_agents_last_error() -> None:
    run = RunState(agents_plan(2, turns=3, quorum=0.5), max_in_flight=100)
    started(run)
    run.apply(result("a0_t0", ok=False))
    run.cancel("user")
    by_agent = {m.agent_id: m.error for m in run.missing_agents()}
    assert by_agent == {"a0": "boom", "a1": "its final turn a1_t2 is cancelled"}


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    random.seed(7)
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    for attempt, bound in ((2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (9, 4.0)):
        delays = [policy.delay_s(attempt) for _ in range(300)]
        assert all(0 <= d <= bound for d in delays)
        # Spread over the whole window: retries of many failed steps do not come back together.
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound and len(set(delays)) == 300


def test_each_retry_of_a_step_waits_a_longer_jittered_backoff() -> None:
    random.seed(3)
    run = RunState(planned({"a": ()}, max_attempts=4), max_in_flight=10, retry=RetryPolicy(base_s=1.0, cap_s=8.0))
    started(run)
    for attempt, bound in ((1, 1.0), (2, 2.0), (3, 4.0)):
        (dispatch,) = run.apply(result("a", attempt=attempt, ok=False)).dispatches
        assert dispatch.attempt == attempt + 1 and 0 <= dispatch.delay_s <= bound


def test_cancel_drops_unfinished_steps() -> None:
    run = RunState(planned({"a": (), "b": ("a",)}), max_in_flight=100)
    started(run)
    outcome = run.cancel("user")
    assert outcome.run_finished is RunPhase.CANCELLED and sorted(outcome.cancelled) == ["a", "b"]
    assert not run.apply(result("a")).changed


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=40), st.randoms())
def test_checkpoint_restore_finishes_like_uninterrupted(seeds: list[int], rnd) -> None:  # type: ignore[no-untyped-def]
    # A random DAG (edges only to earlier steps), interrupted at a random point and restored.
    edges = {f"s{i}": tuple(sorted({f"s{seed % i}" for seed in seeds[:i] if i})) for i in range(len(seeds))}
    plan = planned(edges)
    run = RunState(plan, max_in_flight=5)
    pending = started(run)
    stop_at = rnd.randint(0, len(edges))
    done = 0
    while pending:
        if done == stop_at:
            run = RunState.restore(plan, run.checkpoint(), max_in_flight=5)
            pending += queued(run)
        step = pending.pop(rnd.randrange(len(pending)))
        run.apply(result(step))
        pending += queued(run)
        done += 1
    assert run.phase is RunPhase.EXECUTED
    assert done == len(edges)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30), st.randoms())
def test_the_stored_checkpoint_is_the_state_at_every_point(seeds: list[int], rnd) -> None:  # type: ignore[no-untyped-def]
    # Finished steps' entries are encoded once and reused: the stored JSON must still follow every change
    # (successes, retries, dead letters, a cancel), checkpoint after checkpoint.
    edges = {f"s{i}": tuple(sorted({f"s{seed % i}" for seed in seeds[:i] if i})) for i in range(len(seeds))}
    run = RunState(planned(edges, RunPolicy.QUORUM, max_attempts=2), max_in_flight=3, retry=NO_BACKOFF)
    pending = started(run)
    cancel_at = rnd.randint(0, 2 * len(edges))
    while pending and run.phase is RunPhase.RUNNING:
        assert json.loads(run.checkpoint_json("t")) == json.loads(json.dumps({"tenant": "t", **run.checkpoint()}))
        if cancel_at == 0:
            run.cancel("user")
            break
        cancel_at -= 1
        step = pending.pop(rnd.randrange(len(pending)))
        run.apply(result(step, attempt=run.steps[step].attempt, ok=rnd.random() < 0.7))
        pending += queued(run)
    assert json.loads(run.checkpoint_json("t")) == json.loads(json.dumps({"tenant": "t", **run.checkpoint()}))


def spawning(step: str, request: SpawnRequest) -> StepResult:
    return result(step).model_copy(update={"spawn": request})


def test_spawned_steps_run_after_the_parent_and_before_its_dependents() -> None:
    run = RunState(planned({"a": (), "z": ("a",)}), max_in_flight=100)
    started(run)
    grow = SpawnRequest(
        agents=(AgentSpec(id="helper", role="r"),),
        steps=(
            StepSpec(id="n1", agent_id="helper", instruction="x"),
            StepSpec(id="n2", agent_id="a", instruction="y", depends_on=("n1",)),
        ),
    )
    outcome = run.apply(spawning("a", grow))
    assert outcome.spawned == [("a", ["n1", "n2"])]
    assert queued(run) == ["n1"]
    run.apply(result("n1"))
    assert queued(run) == ["n2"]
    run.apply(result("n2"))
    assert queued(run) == ["z"]
    assert run.apply(result("z")).run_finished is RunPhase.EXECUTED
    assert run.summary().steps_total == 4 and run.summary().agents_count == 2


def test_spawn_survives_checkpoint_and_restore() -> None:
    plan = planned({"a": (), "z": ("a",)})
    run = RunState(plan, max_in_flight=100)
    started(run)
    run.apply(spawning("a", SpawnRequest(steps=(StepSpec(id="n1", agent_id="a", instruction="x"),))))
    restored = RunState.restore(plan, run.checkpoint(), max_in_flight=100)
    assert queued(restored) == ["n1"]
    restored.apply(result("n1"))
    assert queued(restored) == ["z"]


def test_spawn_over_the_limits_or_onto_unfinished_steps_is_rejected() -> None:
    run = RunState(planned({"a": (), "b": (), "z": ("a", "b")}), max_in_flight=100, limits=PlanLimits(max_steps=4))
    started(run)
    too_many = SpawnRequest(steps=tuple(StepSpec(id=f"n{i}", agent_id="a", instruction="x") for i in range(2)))
    outcome = run.apply(spawning("a", too_many))
    assert outcome.retried and "spawn rejected" in outcome.retried[0][2]
    onto_unfinished = SpawnRequest(steps=(StepSpec(id="n", agent_id="a", instruction="x", depends_on=("b",)),))
    outcome = run.apply(spawning("a", onto_unfinished).model_copy(update={"attempt": 2}))
    assert outcome.retried and "neither new nor finished" in outcome.retried[0][2]


def test_scheduler_prefers_priority_then_the_run_with_fewest_in_flight() -> None:
    big = RunState(planned({f"s{i}": () for i in range(100)}), max_in_flight=1000)
    small_plan = planned({f"t{i}": () for i in range(3)}).model_copy(update={"run_id": "small"})
    small = RunState(small_plan, max_in_flight=1000)
    urgent_plan = planned({"u": ()}).model_copy(update={"run_id": "urgent", "priority": 5})
    urgent = RunState(urgent_plan, max_in_flight=1000)
    for run in (big, small, urgent):
        run.start()
    filled = dict((r.run_id, [d.step_id for d in ds]) for r, ds in Scheduler(10, 1000).fill([big, small, urgent]))
    assert filled["urgent"] == ["u"]
    assert len(filled["small"]) == 3  # not starved by the big run's 100 ready steps
    assert len(filled["r"]) == 6


def test_scheduler_respects_the_tenant_cap() -> None:
    runs = [RunState(planned({f"s{i}": () for i in range(10)}).model_copy(update={"run_id": f"r{k}"}), 100)
            for k in range(3)]  # fmt: skip
    for run in runs:
        run.start()
    filled = Scheduler(max_in_flight=100, max_in_flight_per_tenant=7).fill(runs)
    assert sum(len(d) for _, d in filled) == 7


def test_a_result_ahead_of_a_restored_state_is_kept_for_later() -> None:
    # A replica applied a's result and dispatched b, then died before its checkpoint: b's result
    # reaches the replica that restored the older state before a's (redelivered) result does.
    plan = planned({"a": (), "b": ("a",)})
    run = RunState(plan, max_in_flight=100)
    started(run)
    restored = RunState.restore(plan, run.checkpoint(), max_in_flight=100)
    assert restored.apply(result("b")).early
    restored.apply(result("a"))
    assert queued(restored) == ["b"]
    assert restored.apply(result("b")).run_finished is RunPhase.EXECUTED
