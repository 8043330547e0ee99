"""The run state machine: dependencies, caps, retries, dead letters, policies, idempotency, checkpoints."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.dispatcher.state import RetryPolicy, RunPhase, RunState, StepPhase
from swarm.contracts import (
    AgentSpec,
    Plan,
    RunPlanned,
    RunPolicy,
    StepResult,
    StepSpec,
    StepStatus,
    utc_now,
)

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


def test_steps_dispatch_when_their_dependencies_finish() -> None:
    run = RunState(planned({"a": (), "b": (), "c": ("a", "b")}), max_in_flight=100)
    assert [d.step_id for d in run.start().dispatches] == ["a", "b"]
    assert run.apply(result("a")).dispatches == []
    assert [d.step_id for d in run.apply(result("b")).dispatches] == ["c"]
    outcome = run.apply(result("c"))
    assert outcome.run_finished is RunPhase.EXECUTED
    assert run.sink_step_ids() == ["c"]
    assert run.summary().steps_succeeded == 3 and run.summary().prompt_tokens == 9


def test_duplicate_and_stale_results_change_nothing() -> None:
    run = RunState(planned({"a": (), "b": ("a",)}), max_in_flight=100)
    run.start()
    assert run.apply(result("a")).changed
    again = run.apply(result("a"))
    assert not again.changed and again.dispatches == []
    assert not run.apply(result("b", attempt=7)).changed


def test_concurrency_cap_holds_steps_back() -> None:
    run = RunState(planned({f"s{i}": () for i in range(10)}), max_in_flight=3)
    assert len(run.start().dispatches) == 3
    assert len(run.apply(result("s0")).dispatches) == 1
    assert run.in_flight == 3


def test_retry_then_dead_letter_fails_a_fail_fast_run() -> None:
    run = RunState(planned({"a": (), "b": ()}, max_attempts=2), max_in_flight=100, retry=NO_BACKOFF)
    run.start()
    first = run.apply(result("a", ok=False))
    assert first.retried == [("a", 2, "boom")] and first.dispatches[0].attempt == 2
    second = run.apply(result("a", attempt=2, ok=False))
    assert second.dead_lettered == [("a", "boom")]
    assert second.run_finished is RunPhase.FAILED and second.cancelled == ["b"]
    assert run.steps["b"].phase is StepPhase.CANCELLED


def test_non_retryable_failure_dead_letters_at_once() -> None:
    run = RunState(planned({"a": ()}, max_attempts=5), max_in_flight=100)
    run.start()
    assert run.apply(result("a", ok=False, retryable=False)).dead_lettered == [("a", "boom")]


def test_quorum_run_survives_a_failed_mapper() -> None:
    edges: dict[str, tuple[str, ...]] = {f"m{i}": () for i in range(20)}
    edges["reduce"] = tuple(edges)
    plan = planned(edges, policy=RunPolicy.QUORUM, max_attempts=1).model_copy(update={"quorum": 0.9})
    run = RunState(plan, max_in_flight=100)
    run.start()
    run.apply(result("m0", ok=False))
    for i in range(1, 20):
        outcome = run.apply(result(f"m{i}"))
    assert [d.step_id for d in outcome.dispatches] == ["reduce"]
    assert run.apply(result("reduce")).run_finished is RunPhase.EXECUTED
    assert run.failed_step_ids() == ["m0"]


def test_cancel_drops_unfinished_steps() -> None:
    run = RunState(planned({"a": (), "b": ("a",)}), max_in_flight=100)
    run.start()
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
    pending = [d.step_id for d in run.start().dispatches]
    stop_at = rnd.randint(0, len(edges))
    done = 0
    while pending:
        if done == stop_at:
            run, _ = RunState.restore(plan, run.checkpoint(), max_in_flight=5)
        step = pending.pop(rnd.randrange(len(pending)))
        pending += [d.step_id for d in run.apply(result(step)).dispatches]
        done += 1
    assert run.phase is RunPhase.EXECUTED
    assert done == len(edges)
