"""Step DAG logic: validation against limits, topological order, sinks, the longest chain of durations."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

from swarm.contracts import Plan, RejectionCode


class PlanError(ValueError):
    """A plan that cannot run: duplicate ids, unknown references, a cycle, or too big."""

    def __init__(self, message: str, code: RejectionCode = RejectionCode.INVALID, path: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.path = path  # JSON Pointer into the plan, e.g. '/steps/3/depends_on/0'


@dataclass(frozen=True)
class PlanLimits:
    """How big a plan may be."""

    max_agents: int = 300
    max_steps: int = 4000
    max_depends_on: int = 500


def validate_plan(plan: Plan, limits: PlanLimits | None = None) -> None:
    """Raise PlanError with a clear reason unless `plan` is a runnable DAG within `limits`."""
    limits = limits or PlanLimits()
    if len(plan.agents) > limits.max_agents:
        raise PlanError(
            f"plan has {len(plan.agents)} agents, the limit is {limits.max_agents}", RejectionCode.LIMIT, "/agents"
        )
    if len(plan.steps) > limits.max_steps:
        raise PlanError(
            f"plan has {len(plan.steps)} steps, the limit is {limits.max_steps}", RejectionCode.LIMIT, "/steps"
        )
    for what, ids in (("agent", [a.id for a in plan.agents]), ("step", [s.id for s in plan.steps])):
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            second = [i for i, id_ in enumerate(ids) if id_ == duplicates[0]][1]
            raise PlanError(
                f"duplicate {what} ids: {', '.join(duplicates[:10])}",
                RejectionCode.DUPLICATE_ID, f"/{what}s/{second}/id",
            )  # fmt: skip
    known_agents = {a.id for a in plan.agents}
    step_ids = {s.id for s in plan.steps}
    for i, step in enumerate(plan.steps):
        if step.agent_id not in known_agents:
            raise PlanError(
                f"step {step.id} names unknown agent {step.agent_id}", RejectionCode.UNKNOWN_AGENT, f"/steps/{i}/agent_id"
            )
        if len(step.depends_on) > limits.max_depends_on:
            raise PlanError(
                f"step {step.id} depends on {len(step.depends_on)} steps, the limit is {limits.max_depends_on}",
                RejectionCode.LIMIT, f"/steps/{i}/depends_on",
            )  # fmt: skip
        for j, dep in enumerate(step.depends_on):
            if dep not in step_ids:
                raise PlanError(
                    f"step {step.id} depends on unknown step {dep}", RejectionCode.UNKNOWN_STEP, f"/steps/{i}/depends_on/{j}"
                )
            if dep == step.id:
                raise PlanError(f"step {step.id} depends on itself", RejectionCode.CYCLE, f"/steps/{i}/depends_on/{j}")
    topological_order({s.id: s.depends_on for s in plan.steps})


def topological_order(depends_on: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Kahn's algorithm; raises PlanError naming steps on a cycle."""
    remaining = {step: len(set(deps)) for step, deps in depends_on.items()}
    dependents = children_of(depends_on)
    ready = deque(step for step, n in remaining.items() if n == 0)
    order = []
    while ready:
        step = ready.popleft()
        order.append(step)
        for child in dependents[step]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if len(order) != len(depends_on):
        on_cycle = sorted(step for step, n in remaining.items() if n > 0)
        raise PlanError(f"the step graph has a cycle through: {', '.join(on_cycle[:10])}", RejectionCode.CYCLE, "/steps")
    return order


def children_of(depends_on: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Invert dependencies: for each step, the steps that depend on it."""
    children: dict[str, list[str]] = {step: [] for step in depends_on}
    for step, deps in depends_on.items():
        for dep in set(deps):
            children[dep].append(step)
    return children


def sinks(depends_on: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Steps no other step depends on (the run's final outputs)."""
    needed = {dep for deps in depends_on.values() for dep in deps}
    return [step for step in depends_on if step not in needed]


def longest_chain(
    depends_on: Mapping[str, tuple[str, ...]], duration: Mapping[str, float]
) -> tuple[float, list[str]]:
    """The longest chain of durations through the DAG (what no schedule can beat): its length and its steps,
    first to last. Planned, not observed: compare `swarm.ops.analytics.observed_critical_path`."""
    finish: dict[str, float] = {}
    best_parent: dict[str, str | None] = {}
    for step in topological_order(depends_on):
        parent = max(depends_on[step], key=lambda d: finish[d], default=None)
        finish[step] = (finish[parent] if parent else 0.0) + duration.get(step, 0.0)
        best_parent[step] = parent
    if not finish:
        return 0.0, []
    end = max(finish, key=lambda s: finish[s])
    path = []
    node: str | None = end
    while node is not None:
        path.append(node)
        node = best_parent[node]
    return finish[end], path[::-1]
