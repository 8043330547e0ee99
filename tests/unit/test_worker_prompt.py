"""How a step's prompt is built from its dependencies' outputs, within the worker's budget."""

from __future__ import annotations

from services.worker_pool.execution import MIN_INPUT_CHARS, build_prompt
from swarm.contracts import AgentSpec, StepDispatch, StepSpec


def dispatch(n_deps: int) -> StepDispatch:
    deps = tuple(f"s{i}" for i in range(n_deps))
    step = StepSpec(id="reduce", agent_id="a", instruction="merge them", depends_on=deps)
    return StepDispatch(run_id="r", tenant="t", goal="g", agent=AgentSpec(id="a", role="editor"), step=step, attempt=1)


def test_a_few_inputs_share_the_budget_and_are_all_shown() -> None:
    inputs = {f"s{i}": f"output {i} " + "x" * 5000 for i in range(3)}
    _, user = build_prompt(dispatch(3), inputs, context_chars=6000)
    assert all(f"[s{i}] output {i}" in user for i in range(3))
    assert len(user) < 6000 + 200 and "left out" not in user


def test_a_wide_fan_in_stays_within_the_budget_and_says_what_it_left_out() -> None:
    inputs = {f"s{i}": "y" * 500 for i in range(300)}
    _, user = build_prompt(dispatch(300), inputs, context_chars=6000)
    shown = 6000 // MIN_INPUT_CHARS
    assert user.count("[s") == shown and f"[s{shown - 1}]" in user
    assert f"({300 - shown} more inputs left out" in user
    assert len(user) < 6000 + 20 * shown + 200  # the budget, plus labels and the instruction
