"""A plan as a peer engine runs it, and the figures of a run: pure, no engine imported here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest import metrics
from loadtest.scenarios import PlanLoad
from swarm.dag import topological_order


@dataclass(frozen=True)
class PeerStep:
    """One step as a task: the actor that runs it, how long it sleeps, the steps whose results it takes."""

    step_id: str
    actor: int
    latency_s: float
    depends_on: tuple[str, ...]


def peer_steps(load: PlanLoad, actors: int) -> list[PeerStep]:
    """The plan's steps in submission order (each after its dependencies); an agent's turns stay on one actor."""
    plan = load.final_plan
    agent_index = {agent.id: n for n, agent in enumerate(plan.agents)}
    by_id = {step.id: step for step in plan.steps}
    latency_s = load.latency_s
    return [
        PeerStep(step_id, agent_index[by_id[step_id].agent_id] % actors, latency_s[step_id], by_id[step_id].depends_on)
        for step_id in topological_order(load.depends_on)
    ]


def run_figures(load: PlanLoad, completed: Sequence[str], makespan_s: float) -> dict[str, Any]:
    """One run's figures: steps/s, makespan, the ideal (critical-path) makespan, efficiency, steps lost."""
    step_ids = [step.id for step in load.final_plan.steps]
    critical_path_s = metrics.critical_path_s(load.depends_on, load.latency_s)
    # A step is accounted for when its result came back exactly once.
    counted = {step_id: 0 for step_id in step_ids}
    for step_id in completed:
        counted[step_id] = counted.get(step_id, 0) + 1
    return {
        "steps_total": len(step_ids),
        "steps_succeeded": sum(1 for n in counted.values() if n == 1),
        "steps_lost": sum(1 for n in counted.values() if n != 1),
        "makespan_s": round(makespan_s, 3),
        "critical_path_s": round(critical_path_s, 3),
        "efficiency": _round(metrics.efficiency(critical_path_s, makespan_s)),
        "steps_per_s": _round(metrics.rate(len(step_ids), makespan_s), 1),
    }


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one record: medians of the figures, steps lost summed."""
    combined = metrics.combine_runs(runs)
    if len(runs) > 1:
        combined["runs"] = list(runs)
    return combined


def _round(value: float | None, digits: int = 4) -> float | None:
    return round(value, digits) if value is not None else None
