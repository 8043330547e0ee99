"""spawn-300x4000: a run that grows from 1 step to 4,000 while it runs, against the same DAG submitted up front.

The root orchestrator's (simulated) model calls `spawn` once: 29 more leads and 30 lead steps (the
orchestrator leads the 30th team). Each lead step spawns its team's 9 new workers, 10 multi-turn chains
(its workers' and its own) and a reducer over them. A final report, in the submitted plan, waits for
everything spawned. 1 + 29 + 30 x 9 = 300 agents: the run limit. The workers remember their last 2 turns.

The spawn requests are scripted through the sim backend (`StepSpec.sim_tool_calls`), by reference: each
lead's request (~130 steps) sits in the payloads object store, so no message carries the whole DAG.
A spawning step makes two model calls (the spawn, then its answer), each half of its drawn latency, so
both runs have the same step latencies and critical path.
"""

from __future__ import annotations

import itertools
import json
import random
import secrets
from typing import Any

from loadtest.runner import ScenarioContext, wait_until_quiet
from loadtest.scenarios import LatencyDraw, PlanLoad, scenario
from swarm.contracts import AgentSpec, Keys, MemoryMode, MemoryPolicy, Plan, SimToolCall, StepSpec

NAME = "spawn-300x4000"
TEAMS = 30
CHAINS_PER_TEAM = 10
_PAIRS = itertools.count()  # the scenario's runs in this process
WORKER_MEMORY = MemoryPolicy(mode=MemoryMode.LAST_TURNS, max_turns=2, max_chars=2000)


def spawn_loads(
    seed: int, latency_scale: float, scale_steps: float = 1.0, median_ms: float = 1000.0
) -> tuple[PlanLoad, PlanLoad]:
    """(grown, static): the 2-step plan that spawns its way to the DAG, and that DAG submitted up front."""
    n_steps = max(TEAMS * (CHAINS_PER_TEAM + 2) + 2, round(4000 * scale_steps))
    draw = LatencyDraw(random.Random(f"spawn-latency:{seed}"), median_ms, 0.35, latency_scale)
    token = f"{NAME}-{seed}-{secrets.token_hex(4)}"
    turns_total = n_steps - 2 - 2 * TEAMS  # root, report, a lead step and a reducer per team
    chains = TEAMS * CHAINS_PER_TEAM
    orch = AgentSpec(id="orch", role="orchestrator")
    leads = [orch] + [AgentSpec(id=f"lead{t}", role="lead", memory=WORKER_MEMORY) for t in range(1, TEAMS)]
    root = StepSpec(id="root", agent_id="orch", instruction="scope", sim_latency_ms=draw())
    static_agents: list[AgentSpec] = [*leads]
    static_steps: list[StepSpec] = [root]
    root_spawn: dict[str, Any] = {"agents": [_agent_args(a) for a in leads[1:]], "steps": []}
    scripts: dict[str, bytes] = {}
    reducers = []
    for team, lead in enumerate(leads):
        lead_step = StepSpec(id=f"L{team}", agent_id=lead.id, instruction="lead", sim_latency_ms=draw())
        workers = [AgentSpec(id=f"w{team}-{j}", role="worker", memory=WORKER_MEMORY) for j in range(1, CHAINS_PER_TEAM)]
        team_steps: list[StepSpec] = []
        ends = []
        for j, agent in enumerate([lead, *workers]):
            chain = team * CHAINS_PER_TEAM + j
            turns = turns_total // chains + (1 if chain < turns_total % chains else 0)
            previous: tuple[str, ...] = ()
            for k in range(turns):
                step_id = f"c{team}-{j}-{k}"
                team_steps.append(StepSpec(id=step_id, agent_id=agent.id, instruction="work", depends_on=previous,
                                           sim_latency_ms=draw()))  # fmt: skip
                previous = (step_id,)
            ends.extend(previous)
        reducer = StepSpec(id=f"R{team}", agent_id=lead.id, instruction="reduce", depends_on=tuple(ends),
                           sim_latency_ms=draw())  # fmt: skip
        team_steps.append(reducer)
        reducers.append(reducer.id)
        name = Keys.sim_script(token, lead_step.id)
        scripts[name] = json.dumps({"agents": [_agent_args(w) for w in workers],
                                    "steps": [_step_args(s) for s in team_steps]}).encode()  # fmt: skip
        root_spawn["steps"].append(_step_args(_spawning(lead_step, SimToolCall(tool="spawn", arguments_ref=name))))
        static_agents.extend(workers)
        static_steps.append(lead_step.model_copy(update={"depends_on": ("root",)}))
        static_steps.extend(s if s.depends_on else s.model_copy(update={"depends_on": (lead_step.id,)}) for s in team_steps)
    report = StepSpec(id="report", agent_id="orch", instruction="report", depends_on=("root",), sim_latency_ms=draw())
    scripts[Keys.sim_script(token, "root")] = json.dumps(root_spawn).encode()
    grown_root = _spawning(root, SimToolCall(tool="spawn", arguments_ref=Keys.sim_script(token, "root")))
    static = Plan(agents=tuple(static_agents),
                  steps=(*static_steps, report.model_copy(update={"depends_on": ("root", *reducers)})))  # fmt: skip
    grown = Plan(agents=(orch,), steps=(grown_root, report))
    return PlanLoad(grown, grows_into=static, scripts=scripts), PlanLoad(static)


def _spawning(step: StepSpec, call: SimToolCall) -> StepSpec:
    """The step with the spawn tool and its scripted call; two model calls share its latency."""
    half = round((step.sim_latency_ms or 0.0) / 2, 1)
    return step.model_copy(update={"tools": ("spawn",), "sim_tool_calls": (call,), "sim_latency_ms": half})


def _agent_args(agent: AgentSpec) -> dict[str, Any]:
    return agent.model_dump(mode="json", exclude_defaults=True)


def _step_args(step: StepSpec) -> dict[str, Any]:
    return step.model_dump(mode="json", exclude_defaults=True)


@scenario(NAME, "A run that grows from 1 step to 4,000 by spawn (30 leads x 10 multi-turn chains, reducers), "
          "then the same DAG submitted up front; spawn latency and the efficiency of both.")  # fmt: skip
async def spawn_300x4000(ctx: ScenarioContext) -> dict[str, Any]:
    """Run the grown plan and the static one; the grown run's figures, the static run's beside them."""
    grown, static = spawn_loads(ctx.seed, ctx.latency_scale, ctx.scale_steps, ctx.options.median_ms or 1000.0)
    # Which goes first alternates over --runs: neither run always gets the quieter machine.
    first_static = next(_PAIRS) % 2 == 0
    figures_by_kind: dict[str, dict[str, Any]] = {}
    for kind, load in (("static", static), ("grown", grown)) if first_static else (("grown", grown), ("static", static)):
        if figures_by_kind and ctx.client is not None:  # the first run's events are stored before the second runs
            await wait_until_quiet(ctx.client, ctx.progress)
        figures_by_kind[kind] = await ctx.run_plan(load)
    figures, static_figures = figures_by_kind["grown"], figures_by_kind["static"]
    figures["ran_first"] = "static" if first_static else "grown"
    figures["static"] = {k: static_figures.get(k) for k in
                         ("run_id", "status", "steps_total", "steps_lost", "makespan_s", "critical_path_s", "efficiency", "steps_per_s",
                          "step_latency_ms")}  # fmt: skip
    figures["efficiency_static"] = static_figures.get("efficiency")
    if figures.get("efficiency") is not None and static_figures.get("efficiency") is not None:
        figures["efficiency_gap"] = round(static_figures["efficiency"] - figures["efficiency"], 4)
    figures["steps_lost"] = (figures.get("steps_lost") or 0) + (static_figures.get("steps_lost") or 0)
    return figures
