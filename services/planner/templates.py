"""Pattern templates: map, map-reduce, pipeline and vote plans built from a goal and an agent count, or around
agents an LLM proposed."""

from __future__ import annotations

import re
from collections.abc import Callable

from swarm.contracts import AgentSpec, Plan, PlanPattern, StepSpec
from swarm.dag import PlanLimits

# Instructions quote the goal; the worker also receives the whole goal with every step.
GOAL_EXCERPT_CHARS = 400

# Angles a researcher can take on any goal; cycled (and numbered) when more agents are asked for.
ASPECTS = (
    "background, context and key definitions",
    "the most important facts and evidence",
    "the main approaches, options or alternatives",
    "risks, limitations and failure modes",
    "costs, resources and constraints",
    "concrete examples and precedents",
    "stakeholders and their interests",
    "open questions and uncertainties",
    "recommended next actions",
    "how success would be measured",
)

# Stages of a pipeline, first to last; stages beyond these are refinement passes before the editor.
PIPELINE_STAGES = (
    ("researcher", "Gather the facts, constraints and sources the goal needs. List them plainly."),
    ("analyst", "Analyse the previous stage's material: structure it, weigh it, draw conclusions."),
    ("drafter", "Write a complete first answer to the goal from the previous stage's analysis."),
    ("critic", "Find errors, gaps and weak points in the previous stage's draft and fix them."),
)
PIPELINE_LAST = ("editor", "Produce the final, polished answer to the goal from the previous stage's work.")


def excerpt(goal: str, limit: int = GOAL_EXCERPT_CHARS) -> str:
    """The goal on one line, cut to `limit` characters."""
    flat = " ".join(goal.split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def aspect(i: int) -> str:
    """The i-th aspect (0-based); numbered once the list repeats."""
    base = ASPECTS[i % len(ASPECTS)]
    rounds = i // len(ASPECTS)
    return base if rounds == 0 else f"{base} (angle {rounds + 1})"


def _reduce_step_count(n_inputs: int, fan_in: int) -> int:
    """Steps `_reduce_tree` makes for `n_inputs` outputs."""
    count = 1
    while n_inputs > fan_in:
        n_inputs = -(-n_inputs // fan_in)
        count += n_inputs
    return count


def _worker_count(n_agents: int, limits: PlanLimits, coordinators: int, fan_in: int) -> int:
    """How many parallel agents (one step each) fit the limits next to `coordinators` reducing agents."""
    n = max(1, min(n_agents, limits.max_agents - coordinators, limits.max_steps))
    while coordinators and n > 1 and n + _reduce_step_count(n, fan_in) > limits.max_steps:
        n -= 1
    return n


def _reduce_tree(
    inputs: list[str],
    agent_id: str,
    fan_in: int,
    prefix: str,
    partial: Callable[[int], str],
    final: str,
    final_id: str,
) -> list[StepSpec]:
    """Steps that combine `inputs` at most `fan_in` at a time, level by level, into one `final_id` step."""
    steps: list[StepSpec] = []
    level = 1
    current = inputs
    while len(current) > fan_in:
        groups = [current[k : k + fan_in] for k in range(0, len(current), fan_in)]
        current = []
        for k, group in enumerate(groups, start=1):
            step_id = f"{prefix}-l{level}-{k}"
            steps.append(
                StepSpec(id=step_id, agent_id=agent_id, instruction=partial(len(group)), depends_on=tuple(group))
            )
            current.append(step_id)
        level += 1
    steps.append(StepSpec(id=final_id, agent_id=agent_id, instruction=final, depends_on=tuple(current)))
    return steps


def _fan_in(limits: PlanLimits, fan_in: int) -> int:
    return max(2, min(fan_in, limits.max_depends_on))


def _researchers(goal: str, n: int) -> tuple[list[AgentSpec], list[StepSpec]]:
    """n researcher agents, one step each, each on its own aspect of the goal."""
    agents, steps = [], []
    for i in range(n):
        focus = aspect(i)
        agents.append(
            AgentSpec(
                id=f"researcher-{i + 1}",
                role="researcher",
                instructions=(
                    f"You are one of {n} researchers working on a shared goal. Your focus: {focus}. "
                    "Be specific and factual; say what you are unsure about."
                ),
            )
        )
        steps.append(
            StepSpec(
                id=f"research-{i + 1}",
                agent_id=f"researcher-{i + 1}",
                instruction=f"Goal: {excerpt(goal)}\nCover {focus}. Write concise findings another agent can build on.",
            )
        )
    return agents, steps


def map_plan(goal: str, n_agents: int, limits: PlanLimits = PlanLimits(), fan_in: int = 16) -> Plan:
    """n independent researchers, one aspect each; the aggregator synthesizes their outputs."""
    n = _worker_count(n_agents, limits, 0, fan_in)
    agents, steps = _researchers(goal, n)
    return Plan(agents=tuple(agents), steps=tuple(steps), pattern=PlanPattern.MAP)


def map_reduce_plan(goal: str, n_agents: int, limits: PlanLimits = PlanLimits(), fan_in: int = 16) -> Plan:
    """n researchers, one aspect each, then a synthesizer combining all findings (in a tree when many)."""
    fan_in = _fan_in(limits, fan_in)
    n = _worker_count(n_agents, limits, 1, fan_in)
    agents, steps = _researchers(goal, n)
    agents.append(
        AgentSpec(
            id="synthesizer",
            role="synthesizer",
            instructions="You combine findings of several researchers into one coherent, non-repetitive answer. "
            "Resolve contradictions and keep what matters for the goal.",
        )
    )
    steps += _reduce_tree(
        [s.id for s in steps],
        "synthesizer",
        fan_in,
        "reduce",
        lambda k: f"Goal: {excerpt(goal)}\nMerge these {k} sets of findings into one summary; keep every key point.",
        f"Goal: {excerpt(goal)}\nSynthesize all findings into the final answer to the goal.",
        "synthesize",
    )
    return Plan(agents=tuple(agents), steps=tuple(steps), pattern=PlanPattern.MAP_REDUCE)


def pipeline_plan(goal: str, n_agents: int, limits: PlanLimits = PlanLimits(), fan_in: int = 16) -> Plan:
    """A chain of n stages (research, analysis, draft, critique, ... edit), each building on the previous one."""
    n = _worker_count(n_agents, limits, 0, fan_in)
    roles: list[tuple[str, str]]
    if n == 1:
        roles = [PIPELINE_LAST]
    else:
        head = list(PIPELINE_STAGES[: n - 1])
        refiners = [
            ("reviser", "Improve the previous stage's answer: correct it, complete it, tighten it.")
            for _ in range(n - 1 - len(head))
        ]
        roles = [*head, *refiners, PIPELINE_LAST]
    agents, steps = [], []
    for i, (role, task) in enumerate(roles):
        agent_id, step_id = f"{role}-{i + 1}", f"stage-{i + 1}"
        agents.append(
            AgentSpec(id=agent_id, role=role, instructions=f"You are stage {i + 1} of {n} of a pipeline, the {role}.")
        )
        steps.append(
            StepSpec(
                id=step_id,
                agent_id=agent_id,
                instruction=f"Goal: {excerpt(goal)}\n{task}",
                depends_on=(f"stage-{i}",) if i else (),
            )
        )
    return Plan(agents=tuple(agents), steps=tuple(steps), pattern=PlanPattern.PIPELINE)


def vote_plan(goal: str, n_agents: int, limits: PlanLimits = PlanLimits(), fan_in: int = 16) -> Plan:
    """n independent answers to the same goal, then a judge picking (and fixing) the best one."""
    fan_in = _fan_in(limits, fan_in)
    n = _worker_count(n_agents, limits, 1, fan_in)
    agents = [
        AgentSpec(
            id=f"voter-{i + 1}",
            role="solver",
            instructions="Answer the goal on your own, fully and carefully; state your final answer clearly.",
        )
        for i in range(n)
    ]
    steps = [
        StepSpec(
            id=f"answer-{i + 1}",
            agent_id=f"voter-{i + 1}",
            instruction=f"Goal: {excerpt(goal)}\nGive your own complete answer, with a one-line final answer at the end.",
        )
        for i in range(n)
    ]
    agents.append(
        AgentSpec(
            id="judge",
            role="judge",
            instructions="You compare candidate answers, check them against the goal, and pick the best; "
            "where most candidates agree, prefer the majority unless it is clearly wrong.",
        )
    )
    steps += _reduce_tree(
        [s.id for s in steps],
        "judge",
        fan_in,
        "shortlist",
        lambda k: f"Goal: {excerpt(goal)}\nPick the best of these {k} answers and restate it in full.",
        f"Goal: {excerpt(goal)}\nCompare the candidate answers, pick the best (majority where sound), "
        "and give the final answer.",
        "judge",
    )
    return Plan(agents=tuple(agents), steps=tuple(steps), pattern=PlanPattern.VOTE)


TemplateFn = Callable[[str, int, PlanLimits, int], Plan]

TEMPLATES: dict[PlanPattern, TemplateFn] = {
    PlanPattern.MAP: map_plan,
    PlanPattern.MAP_REDUCE: map_reduce_plan,
    PlanPattern.PIPELINE: pipeline_plan,
    PlanPattern.VOTE: vote_plan,
}


def instantiate(
    pattern: PlanPattern, goal: str, n_agents: int, limits: PlanLimits = PlanLimits(), fan_in: int = 16
) -> Plan:
    """The plan of `pattern` for `goal` with about `n_agents` parallel agents, within `limits`."""
    return TEMPLATES[pattern](goal, n_agents, limits, fan_in)


# --------------------------------------------------------------------------- DAGs around LLM-proposed agents

# How a goal's wording picks the DAG that code builds around a small model's sub-questions: one best answer
# wanted means a vote; a piece of writing built in stages means a pipeline; anything else is split and merged.
_VOTE_RE = re.compile(
    r"\b(which (one|is|of|should)|which\b[^.?!]*\b(best|better|should)|choose|pick|select|decide)\b", re.IGNORECASE
)
_PIPELINE_RE = re.compile(
    r"\b(then|step by step|(draft|write|compose) (a|an|the) \w*\s*(essay|report|article|story|post|letter|plan))\b",
    re.IGNORECASE,
)


def pattern_for_goal(goal: str) -> PlanPattern:
    """The DAG shape a goal asks for: vote (one best answer), pipeline (staged writing) or map-reduce."""
    if _VOTE_RE.search(goal):
        return PlanPattern.VOTE
    if _PIPELINE_RE.search(goal):
        return PlanPattern.PIPELINE
    return PlanPattern.MAP_REDUCE


def plan_around(
    pattern: PlanPattern,
    goal: str,
    proposed: list[tuple[str, str]],
    limits: PlanLimits = PlanLimits(),
    fan_in: int = 16,
) -> Plan:
    """The DAG of `pattern` built around proposed (role, instruction) agents, one step each.

    map-reduce: the agents work in parallel and a synthesizer merges them; pipeline: each builds on the one
    before and the last gives the answer; vote (or map): parallel answers, then a judge picks the best.
    """
    fan_in = _fan_in(limits, fan_in)
    coordinators = 0 if pattern in (PlanPattern.PIPELINE, PlanPattern.MAP) else 1
    proposed = proposed[: _worker_count(len(proposed), limits, coordinators, fan_in)]
    agents, steps = [], []
    for i, (role, instruction) in enumerate(proposed, start=1):
        agents.append(
            AgentSpec(
                id=f"agent-{i}",
                role=role,
                instructions=f"You are the {role} of a team of {len(proposed)} agents. Answer your own part of the "
                "goal concisely and factually, in plain sentences.",
            )
        )
        depends_on = (f"ask-{i - 1}",) if pattern is PlanPattern.PIPELINE and i > 1 else ()
        if pattern is PlanPattern.PIPELINE and i == len(proposed):
            instruction = f"{instruction}\nBuild on the previous stage's work and give the complete answer to the goal."
        steps.append(StepSpec(id=f"ask-{i}", agent_id=f"agent-{i}", instruction=instruction, depends_on=depends_on))
    if pattern is PlanPattern.MAP_REDUCE:
        agents.append(
            AgentSpec(
                id="synthesizer",
                role="synthesizer",
                instructions="You combine the answers of several agents into one complete answer to the goal, "
                "in plain paragraphs.",
            )
        )
        steps += _reduce_tree(
            [s.id for s in steps], "synthesizer", fan_in, "reduce",
            lambda k: f"Goal: {excerpt(goal)}\nMerge these {k} answers into one summary; keep every key point.",
            f"Goal: {excerpt(goal)}\nUsing the answers above, write the answer to the goal: one or two paragraphs "
            "that cover every item the goal names.", "synthesize",
        )  # fmt: skip
    elif pattern is PlanPattern.VOTE:
        agents.append(
            AgentSpec(
                id="judge",
                role="judge",
                instructions="You compare candidate answers, check them against the goal, and pick the best.",
            )
        )
        steps += _reduce_tree(
            [s.id for s in steps], "judge", fan_in, "shortlist",
            lambda k: f"Goal: {excerpt(goal)}\nPick the best of these {k} answers and restate it in full.",
            f"Goal: {excerpt(goal)}\nCompare the candidate answers, pick the best and give the final answer.", "judge",
        )  # fmt: skip
    return Plan(agents=tuple(agents), steps=tuple(steps), pattern=pattern)
