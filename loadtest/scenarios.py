"""Scenarios: the registry `swarm loadtest --scenario NAME` picks from, and the plan builders of the run-engine ones.

A scenario is a name, a description and `async run(ctx) -> dict` of figures (`ScenarioContext` is in
`loadtest.runner`). Add one from any module under `loadtest/` with the decorator:

    from loadtest.scenarios import scenario

    @scenario("gateway-sim", "The inference gateway alone, sim backend, 300 callers.")
    async def gateway_sim(ctx: ScenarioContext) -> dict[str, Any]:
        ...  # ctx.nats_url, ctx.latency_scale, ctx.seed, ctx.scaled(n), ctx.console
        return {"requests_per_s": ...}

`load_all()` imports every module of the package, so the decorator is all it takes.

Run-engine scenarios build explicit plans (the planner only validates them) whose steps carry seeded,
deterministic `sim_latency_ms`: a log-normal draw around the scenario's median (`--median-ms`, else its own,
1 s for most) x latency scale, already multiplied here, so a
deployment's gateway must run with its own `sim_latency_scale` at 1 (the default; see `loadtest.runner`).
"""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from swarm.contracts import AgentSpec, Plan, RunPolicy, StepSpec

if TYPE_CHECKING:
    from loadtest.runner import ScenarioContext

log = logging.getLogger(__name__)

ScenarioRun = Callable[["ScenarioContext"], Awaitable[dict[str, Any]]]
Fault = Literal["fail_once", "garbage"]

# Real agent instructions run to hundreds of characters; a plan this heavy travels by reference (PlanRef).
DEFAULT_INSTRUCTION_CHARS = 300
_FILLER = (
    "Read the inputs from the steps this one depends on, check every figure against its source, note where "
    "the sources disagree and why, keep the claims that survive, state the open questions plainly, and hand "
    "the next agent a short, structured summary with the evidence it rests on and the confidence of each claim. "
)


@dataclass(frozen=True)
class Scenario:
    """One load test: what `swarm loadtest --scenario NAME` runs."""

    name: str
    description: str
    run: ScenarioRun
    needs_deployment: bool = True  # the command provides a stack (embedded or --nats-url) before `run`
    measures_floor: bool = True  # the command measures the raw JetStream round trip on that deployment


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, description: str, *, needs_deployment: bool = True, measures_floor: bool = True
) -> Callable[[ScenarioRun], ScenarioRun]:
    """Register `async def run(ctx) -> dict` as scenario `name`."""

    def register(run: ScenarioRun) -> ScenarioRun:
        if name in SCENARIOS and SCENARIOS[name].run is not run:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(name, description, run, needs_deployment, measures_floor)
        return run

    return register


def load_all() -> dict[str, Scenario]:
    """Import every module of the `loadtest` package (their decorators register), then return the registry."""
    import loadtest

    for module in pkgutil.iter_modules(loadtest.__path__):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"loadtest.{module.name}")
        except ImportError as exc:  # a scenario module another team is still writing must not break the others
            log.warning("loadtest.%s not loaded: %s", module.name, exc)
    return SCENARIOS


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class PlanLoad:
    """An explicit plan to submit, how its run treats failures, and what the scenario injected."""

    plan: Plan
    policy: RunPolicy = RunPolicy.FAIL_FAST
    quorum: float = 0.95
    faults: dict[str, Fault] = field(default_factory=dict)
    grows_into: Plan | None = None  # a plan that spawns: the whole DAG it grows into (same step ids, latencies)
    scripts: dict[str, bytes] = field(default_factory=dict)  # object name -> spawn arguments, uploaded first

    @property
    def final_plan(self) -> Plan:
        """The plan as it is when the run ends: what every figure counts."""
        return self.grows_into or self.plan

    @property
    def latency_s(self) -> dict[str, float]:
        """Each step's simulated latency, in seconds (0 when unset)."""
        return {s.id: (s.sim_latency_ms or 0.0) / 1000.0 for s in self.final_plan.steps}

    @property
    def depends_on(self) -> dict[str, tuple[str, ...]]:
        """The DAG, step id -> dependencies."""
        return {s.id: s.depends_on for s in self.final_plan.steps}


class LatencyDraw:
    """Seeded per-step latencies: log-normal around a median, times the latency scale, rounded to 0.1 ms."""

    def __init__(self, rng: random.Random, median_ms: float, sigma: float, scale: float) -> None:
        self.rng, self.mu, self.sigma, self.scale = rng, math.log(median_ms), sigma, scale

    def __call__(self) -> float:
        drawn = self.rng.lognormvariate(self.mu, self.sigma)  # drawn even at scale 0: same DAG for every scale
        return round(drawn * self.scale, 1)


def instruction_text(head: str, chars: int) -> str:
    """An instruction of exactly `chars` characters (at least `head`): `head`, then realistic filler."""
    if chars <= len(head):
        return head
    body = f"{head}: " + _FILLER * (chars // len(_FILLER) + 1)
    return body[:chars].rstrip() + "." * (chars - len(body[:chars].rstrip()))


def _agent(agent_id: str, role: str, chars: int) -> AgentSpec:
    instructions = instruction_text(f"You are {agent_id}, a {role}", chars) if chars else ""
    return AgentSpec(id=agent_id, role=role, instructions=instructions)


def _step(
    step_id: str, agent_id: str, verb: str, latency_ms: float, depends_on: tuple[str, ...] = (), chars: int = 0
) -> StepSpec:
    return StepSpec(
        id=step_id, agent_id=agent_id, instruction=instruction_text(f"{verb} ({step_id})" if chars else verb, chars),
        depends_on=depends_on, sim_latency_ms=latency_ms,
    )  # fmt: skip


def fanout_plan(
    n: int = 300, *, seed: int = 0, latency_scale: float = 1.0, median_ms: float = 1000.0, instruction_chars: int = 0,
    n_agents: int | None = None,
) -> PlanLoad:  # fmt: skip
    """`n` independent steps over `n_agents` agents (default: one each), and one reduce step over all of them."""
    draw = LatencyDraw(random.Random(f"fanout:{seed}"), median_ms, 0.35, latency_scale)
    chars, n_agents = instruction_chars, n_agents or n
    agents = tuple(_agent(f"a{i}", "analyst", chars) for i in range(n_agents))
    steps = [_step(f"s{i}", f"a{i % n_agents}", "analyze", draw(), chars=chars) for i in range(n)]
    steps.append(_step(f"s{n}", "a0", "reduce", draw(), tuple(s.id for s in steps), chars=chars))
    return PlanLoad(Plan(agents=agents, steps=tuple(steps)))


def wide_plan(
    n_steps: int = 4000, *, n_agents: int = 300, groups: int = 20, seed: int = 0, latency_scale: float = 1.0,
    median_ms: float = 1000.0, instruction_chars: int = 0,
) -> PlanLoad:  # fmt: skip
    """Map-reduce as wide as it gets: independent turns of `n_agents` agents, `groups` partial reduces, a final one.

    Every map step is ready at once (wider than any worker pool here); the reduces keep each step's
    depends_on under the contract's limit.
    """
    draw = LatencyDraw(random.Random(f"wide:{seed}"), median_ms, 0.35, latency_scale)
    chars, n_map = instruction_chars, n_steps - groups - 1
    if n_map < groups:
        raise ValueError(f"{n_steps} steps in {groups} groups do not make a wide plan")
    agents = tuple(_agent(f"a{i}", "analyst", chars) for i in range(n_agents))
    steps = [_step(f"s{i}", f"a{i % n_agents}", "analyze", draw(), chars=chars) for i in range(n_map)]
    partials = [
        _step(f"r{g}", f"a{g % n_agents}", "merge", draw(), tuple(f"s{i}" for i in range(g, n_map, groups)), chars)
        for g in range(groups)
    ]
    final = _step("report", "a0", "report", draw(), tuple(p.id for p in partials), chars)
    return PlanLoad(Plan(agents=agents, steps=(*steps, *partials, final)))


def chain_plan(
    n: int = 200, *, seed: int = 0, latency_scale: float = 1.0, median_ms: float = 100.0, n_agents: int = 4,
    instruction_chars: int = 0,
) -> PlanLoad:  # fmt: skip
    """A pipeline of `n` steps, each needing the previous one; `n_agents` agents take turns."""
    draw = LatencyDraw(random.Random(f"chain:{seed}"), median_ms, 0.35, latency_scale)
    chars = instruction_chars
    agents = tuple(_agent(f"a{i}", "editor", chars) for i in range(n_agents))
    steps = [
        _step(f"s{i}", f"a{i % n_agents}", "refine", draw(), (f"s{i - 1}",) if i else (), chars)
        for i in range(n)
    ]
    return PlanLoad(Plan(agents=agents, steps=tuple(steps)))


def swarm_plan(
    n_agents: int = 300,
    n_steps: int = 4000,
    *,
    seed: int = 0,
    latency_scale: float = 1.0,
    median_ms: float = 1000.0,
    teams: int = 20,
    rounds_per_sync: int = 3,
    instruction_chars: int = 0,
) -> PlanLoad:
    """`n_agents` multi-turn agents over `n_steps` steps, in layers of fan-out and fan-in.

    A lead scopes the task (fan-out to every agent). Then, repeatedly, `rounds_per_sync` work rounds —
    each agent takes a turn after its own previous turn (its memory) and after one or two peers'
    turns of the previous round (cross-talk) — and a sync round: each team's lead merges its team's
    latest turns (fan-in), and the team's next turns start from that merge (fan-out). A final report
    merges the teams. Work rounds are cut so the plan has exactly `n_steps` steps.
    """
    if n_agents < teams or n_steps < teams + 2 + n_agents:
        raise ValueError(f"{n_steps} steps over {n_agents} agents in {teams} teams do not make a swarm plan")
    rng = random.Random(f"swarm:{seed}")
    draw = LatencyDraw(random.Random(f"swarm-latency:{seed}"), median_ms, 0.35, latency_scale)
    agents = tuple(_agent(f"a{i}", "lead" if i < teams else "analyst", instruction_chars) for i in range(n_agents))
    team_of = [i % teams for i in range(n_agents)]  # agent i < teams leads team i
    steps: list[StepSpec] = []

    def add(agent: int, verb: str, depends_on: tuple[str, ...]) -> str:
        step_id = f"s{len(steps)}"
        steps.append(_step(step_id, f"a{agent}", verb, draw(), tuple(dict.fromkeys(depends_on)), instruction_chars))
        return step_id

    root = add(0, "scope", ())
    last_turn: dict[int, str] = {}  # agent -> its latest step
    team_head = dict.fromkeys(range(teams), root)  # what a team's next round starts from
    previous_round: list[str] = []  # the last work round's steps (peers for cross-talk)
    after_sync = True
    budget = n_steps - 2  # the root and the final report
    while budget > 0:
        for _ in range(rounds_per_sync):
            width = min(n_agents, budget - teams)  # always leave room for the sync round
            if width <= 0:
                break
            this_round = []
            for agent in range(width):
                own = last_turn.get(agent)
                if after_sync or not previous_round:
                    deps: tuple[str, ...] = (team_head[team_of[agent]],)  # the merge already follows `own`
                else:
                    peers = rng.sample(previous_round, 2 if rng.random() < 0.2 else 1)
                    deps = (own, *peers) if own else tuple(peers)
                this_round.append(add(agent, "work", deps))
                last_turn[agent] = this_round[-1]
            previous_round, after_sync = this_round, False
            budget -= width
        for team in range(min(teams, budget)):
            members = [last_turn[a] for a in range(team, n_agents, teams) if a in last_turn]
            team_head[team] = add(team, "merge", (team_head[team], *members))
            last_turn[team] = team_head[team]
        budget -= min(teams, budget)
        after_sync = True
    add(0, "report", tuple(team_head.values()))
    return PlanLoad(Plan(agents=agents, steps=tuple(steps)))


def with_faults(load: PlanLoad, fraction: float = 0.05, *, seed: int = 0) -> PlanLoad:
    """The same plan where `fraction` of the steps (seeded) fail once or return garbage, half each.

    Runs under the quorum policy, so a fault the deployment cannot absorb shows as a failed step
    rather than cancelling the rest of the run.
    """
    rng = random.Random(f"faults:{seed}")
    chosen = rng.sample(range(len(load.plan.steps)), round(fraction * len(load.plan.steps)))
    faults: dict[str, Fault] = {}
    steps = list(load.plan.steps)
    for n, index in enumerate(sorted(chosen)):
        fault: Fault = "fail_once" if n % 2 == 0 else "garbage"
        steps[index] = steps[index].model_copy(update={"sim_fault": fault})
        faults[steps[index].id] = fault
    plan = load.plan.model_copy(update={"steps": tuple(steps)})
    return PlanLoad(plan, policy=RunPolicy.QUORUM, quorum=0.95, faults=faults)


def _scaled(n: int, factor: float, least: int) -> int:
    return max(least, round(n * factor))


def build_fanout(
    seed: int, latency_scale: float, scale_steps: float = 1.0, instruction_chars: int = DEFAULT_INSTRUCTION_CHARS,
    median_ms: float | None = None,
) -> PlanLoad:  # fmt: skip
    """fanout-300: 300 independent steps and a reduce."""
    n = _scaled(300, scale_steps, 2)
    return fanout_plan(
        n, seed=seed, latency_scale=latency_scale, instruction_chars=instruction_chars, median_ms=median_ms or 1000.0
    )


def build_chain(
    seed: int, latency_scale: float, scale_steps: float = 1.0, instruction_chars: int = DEFAULT_INSTRUCTION_CHARS,
    median_ms: float | None = None,
) -> PlanLoad:  # fmt: skip
    """chain-200: a chain of 200 steps."""
    n = _scaled(200, scale_steps, 2)
    return chain_plan(
        n, seed=seed, latency_scale=latency_scale, instruction_chars=instruction_chars, median_ms=median_ms or 100.0
    )


def build_swarm(
    seed: int, latency_scale: float, scale_steps: float = 1.0, instruction_chars: int = DEFAULT_INSTRUCTION_CHARS,
    median_ms: float | None = None,
) -> PlanLoad:  # fmt: skip
    """swarm-300x4000: 300 agents, 4,000 steps."""
    n_agents = _scaled(300, scale_steps, 20)
    n_steps = max(_scaled(4000, scale_steps, 0), 3 * n_agents + 22)
    return swarm_plan(
        n_agents, n_steps, seed=seed, latency_scale=latency_scale, instruction_chars=instruction_chars,
        median_ms=median_ms or 1000.0,
    )  # fmt: skip


def build_faults(
    seed: int, latency_scale: float, scale_steps: float = 1.0, instruction_chars: int = DEFAULT_INSTRUCTION_CHARS,
    median_ms: float | None = None,
) -> PlanLoad:  # fmt: skip
    """faults-5pct: swarm-300x4000 with 5% of the steps faulty."""
    return with_faults(build_swarm(seed, latency_scale, scale_steps, instruction_chars, median_ms), 0.05, seed=seed)


# (seed, latency scale, scale of the step count, instruction characters, median step latency in ms or None: the
# scenario's own)
PlanBuilder = Callable[[int, float, float, int, float | None], PlanLoad]
PLAN_BUILDERS: dict[str, PlanBuilder] = {
    "fanout-300": build_fanout,
    "chain-200": build_chain,
    "swarm-300x4000": build_swarm,
    "faults-5pct": build_faults,
}
PLAN_DESCRIPTIONS = {  # the median latencies are the defaults of --median-ms
    "fanout-300": "300 independent steps (1 s median simulated latency) and one reduce step over them.",
    "chain-200": "A chain of 200 steps (100 ms median simulated latency): per-hop scheduling overhead.",
    "swarm-300x4000": "300 multi-turn agents, 4,000 steps in layers of fan-out and fan-in (1 s median latency).",
    "faults-5pct": "swarm-300x4000 where 5% of the steps fail once or return garbage (quorum policy).",
}


def _plan_scenario(name: str) -> ScenarioRun:
    async def run(ctx: ScenarioContext) -> dict[str, Any]:
        options = ctx.options
        load = PLAN_BUILDERS[name](ctx.seed, ctx.latency_scale, ctx.scale_steps, options.instruction_chars, options.median_ms)
        return await ctx.run_plan(load)

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    return run


for _name in PLAN_BUILDERS:
    scenario(_name, PLAN_DESCRIPTIONS[_name])(_plan_scenario(_name))
