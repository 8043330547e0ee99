"""Per-agent memory and spawn limits without a server: which turns a dispatch names, how a prompt shows them,
what the spawn tool refuses, and what the sim answers when scripted."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.dispatcher.state import RetryPolicy, RunState, StepPhase
from services.gateway.backends import create_engine
from services.gateway.backends.sim import SimEngine
from services.gateway.settings import GatewaySettings
from services.worker_pool.execution import build_prompt, tool_calls_of
from services.worker_pool.settings import WorkerSettings
from services.worker_pool.toolloop import ToolLoop
from services.worker_pool.tools import ToolContext, ToolError
from services.worker_pool.tools.builtin import SpawnTool
from swarm.contracts import (
    AgentSpec,
    ChatMessage,
    InferenceRequest,
    MemoryMode,
    MemoryPolicy,
    MemoryRef,
    MemoryTurn,
    Plan,
    RunPlanned,
    SimToolCall,
    SpawnBudget,
    SpawnRequest,
    StepDispatch,
    StepResult,
    StepSpec,
    StepStatus,
    utc_now,
)
from swarm.dag import PlanLimits

NO_BACKOFF = RetryPolicy(base_s=0, cap_s=0)
LAST_TWO = MemoryPolicy(mode=MemoryMode.LAST_TURNS, max_turns=2)


def run_of(policy: MemoryPolicy, limits: PlanLimits | None = None) -> RunState:
    """Agent 'a' takes turns t1..t4 in a chain; agent 'b' takes one turn beside them."""
    steps = (
        StepSpec(id="t1", agent_id="a", instruction="first"),
        StepSpec(id="t2", agent_id="a", instruction="second", depends_on=("t1",)),
        StepSpec(id="t3", agent_id="a", instruction="third", depends_on=("t2",)),
        StepSpec(id="t4", agent_id="a", instruction="fourth", depends_on=("t3",)),
        StepSpec(id="other", agent_id="b", instruction="aside", tools=("spawn",)),
    )
    plan = Plan(agents=(AgentSpec(id="a", role="r", memory=policy), AgentSpec(id="b", role="r")), steps=steps)
    planned = RunPlanned(run_id="r", tenant="t", goal="g", plan=plan, source="explicit", submitted_at=utc_now())
    run = RunState(planned, max_in_flight=100, retry=NO_BACKOFF, limits=limits)
    run.start()
    run.take(100)
    return run


def result(step: str, attempt: int = 1, ok: bool = True, spawn: SpawnRequest | None = None) -> StepResult:
    now = utc_now()
    return StepResult(
        run_id="r", step_id=step, attempt=attempt, status=StepStatus.SUCCEEDED if ok else StepStatus.FAILED,
        error=None if ok else "boom", started_at=now, finished_at=now + timedelta(seconds=1), worker_id="w",
        spawn=spawn,
    )  # fmt: skip


def test_a_turn_is_named_the_succeeded_attempts_of_its_agents_earlier_turns_only() -> None:
    run = run_of(MemoryPolicy(mode=MemoryMode.LAST_TURNS, max_turns=10))
    assert run.memory_of("t1") == ((), 0)
    run.apply(result("t1"))
    run.take(100)
    run.apply(result("t2", ok=False))  # attempt 1 fails: its memory entry, if written, is never named
    run.take(100)
    assert run.memory_of("t3") == ((MemoryRef(step_id="t1", attempt=1),), 0)
    run.apply(result("t2", attempt=2))
    run.take(100)
    refs, omitted = run.memory_of("t3")
    assert refs == (MemoryRef(step_id="t1", attempt=1), MemoryRef(step_id="t2", attempt=2)) and omitted == 0
    assert run.memory_of("other") == ((), 0)  # agent b remembers nothing of a (and has no memory policy)


def test_the_policy_bounds_the_turns_and_counts_what_it_left_out() -> None:
    run = run_of(LAST_TWO)
    for step in ("t1", "t2", "t3"):
        run.apply(result(step))
        run.take(100)
    refs, omitted = run.memory_of("t4")
    assert [r.step_id for r in refs] == ["t2", "t3"] and omitted == 1
    summary = run_of(MemoryPolicy(mode=MemoryMode.SUMMARY))
    for step in ("t1", "t2", "t3"):
        summary.apply(result(step))
        summary.take(100)
    refs, omitted = summary.memory_of("t4")
    assert [r.step_id for r in refs] == ["t3"] and omitted == 2  # t3's entry carries the summary of t1, t2
    assert run_of(MemoryPolicy()).memory_of("t4") == ((), 0)


def test_memory_refs_survive_a_checkpoint_and_cover_spawned_turns() -> None:
    run = run_of(LAST_TWO)
    spawn = SpawnRequest(steps=(StepSpec(id="t1b", agent_id="a", instruction="more"),))
    run.apply(result("t1", spawn=spawn))
    run.take(100)
    run.apply(result("t1b"))
    assert run.spawned_by == {"t1b": "t1"}
    stored = json.loads(run.checkpoint_json("t"))  # what the dispatcher writes: spawns encoded once, spliced in
    assert stored == {"tenant": "t", **run.checkpoint()}
    restored = RunState.restore(run.planned, stored, 100, NO_BACKOFF)
    assert restored.spawned_by == {"t1b": "t1"}
    assert restored.memory_of("t3") == run.memory_of("t3") == ((MemoryRef(step_id="t1", attempt=1), MemoryRef(step_id="t1b", attempt=1)), 0)


def test_the_spawn_budget_is_the_room_left_and_a_race_past_it_retries_the_step() -> None:
    run = run_of(MemoryPolicy(), PlanLimits(max_agents=3, max_steps=7))
    assert run.spawn_budget() == SpawnBudget(agents=1, steps=2)
    too_many = SpawnRequest(steps=tuple(StepSpec(id=f"n{i}", agent_id="b", instruction="x") for i in range(3)))
    outcome = run.apply(result("other", spawn=too_many))
    assert outcome.retried and "more than 7 steps" in outcome.retried[0][2]
    assert run.steps["other"].phase is StepPhase.QUEUED and len(run.steps) == 5  # nothing grafted, run goes on


async def test_the_spawn_tool_refuses_a_request_over_the_budget_with_a_clear_error() -> None:
    ctx = ToolContext(run_id="r", tenant="t", step_id="s", agent_id="a", attempt=1, settings=WorkerSettings(),
                      spawn_budget=SpawnBudget(agents=5, steps=2))  # fmt: skip
    args = {"steps": [{"id": f"n{i}", "agent_id": "a", "instruction": "x"} for i in range(3)]}
    with pytest.raises(ToolError, match=r"over the run's limits .* may still add 2 steps"):
        await SpawnTool().call(args, ctx)
    assert ctx.spawned() is None
    await SpawnTool().call({"steps": args["steps"][:2]}, ctx)
    with pytest.raises(ToolError, match="asked for 3 steps"):  # the step's earlier spawns count too
        await SpawnTool().call({"steps": args["steps"][2:]}, ctx)


def turn(step_id: str, output: str, **fields: object) -> MemoryTurn:
    return MemoryTurn(step_id=step_id, attempt=1, instruction=f"do {step_id}", output=output, **fields)  # type: ignore[arg-type]


def test_the_prompt_shows_the_seed_and_earlier_turns_and_says_what_it_left_out() -> None:
    policy = MemoryPolicy(mode=MemoryMode.LAST_TURNS, max_turns=2, max_chars=300, seed="parent says: look east")
    step = StepSpec(id="t9", agent_id="a", instruction="go on")
    dispatch = StepDispatch(run_id="r", tenant="t", goal="g", agent=AgentSpec(id="a", role="r", memory=policy),
                            step=step, attempt=1, memory_omitted=3)  # fmt: skip
    _, user = build_prompt(dispatch, {}, 1000, [turn("t7", "x" * 250), turn("t8", "newest result")])
    assert "parent says: look east" in user
    assert "[t8] Instruction: do t8" in user and "newest result" in user
    assert "[t7]" not in user  # over the 300-character budget: the older turn goes first
    assert "(4 earlier turns left out of your memory: you see your last 2 turns within 300 characters)" in user
    assert user.index("[t8]") < user.index("Your task: go on")


def test_tool_calls_of_a_conversation_are_remembered() -> None:
    conversation = (
        ChatMessage(role="system", content="s"), ChatMessage(role="user", content="u"),
        ChatMessage(role="assistant", content='{"action":"tool","tool":"python"}'),
        ChatMessage(role="user", content="Result of python (call 1):\n42"),
    )  # fmt: skip
    (call,) = tool_calls_of(conversation)
    assert call.tool == "python" and call.result == "42" and '"tool":"python"' in call.request


async def test_the_sim_makes_scripted_tool_calls_then_answers_and_echoes() -> None:
    engine = create_engine(GatewaySettings(backend="sim", sim_latency_scale=0))
    assert isinstance(engine, SimEngine)
    ctx = ToolContext(run_id="r", tenant="t", step_id="s", agent_id="a", attempt=1, settings=WorkerSettings())
    script = [SimToolCall(tool="spawn", arguments={"steps": [{"id": "kid", "agent_id": "a", "instruction": "x"}]})]

    async def model(conversation: tuple[ChatMessage, ...], schema: dict[str, object] | None) -> object:
        from services.worker_pool.validation import ModelReply

        call = script.pop(0) if script else None
        request = InferenceRequest(request_id="q", messages=conversation, json_schema=schema, sim_tool_call=call,
                                   sim_final=call is None, sim_echo=True)  # fmt: skip
        done = await engine.generate(request)
        return ModelReply(done.content, done.prompt_tokens, done.completion_tokens)

    loop = ToolLoop(model, {"spawn": SpawnTool()}, ctx)  # type: ignore[arg-type]
    answer, _ = await loop.run((ChatMessage(role="system", content="s"), ChatMessage(role="user", content="plan it")))
    assert ctx.spawned() == SpawnRequest(steps=(StepSpec(id="kid", agent_id="a", instruction="x"),))
    assert answer.startswith("<<ECHO\n") and '"spawned_steps": ["kid"]' in answer  # it saw the tool's result


def test_unused_options_stay_off_the_wire_and_used_ones_round_trip() -> None:
    plain = StepSpec(id="s", agent_id="a", instruction="x")
    assert "sim_tool_calls" not in plain.model_dump_json() and "sim_echo" not in plain.model_dump_json()
    assert "memory" not in AgentSpec(id="a", role="r").model_dump()
    scripted = StepSpec(id="s", agent_id="a", instruction="x", sim_echo=True,
                        sim_tool_calls=(SimToolCall(tool="spawn", arguments_ref="k"),))  # fmt: skip
    assert StepSpec.model_validate_json(scripted.model_dump_json()) == scripted
    agent = AgentSpec(id="a", role="r", memory=LAST_TWO)
    assert AgentSpec.model_validate_json(agent.model_dump_json()) == agent


def test_the_spawn_tools_schema_takes_whole_agent_and_step_specs() -> None:
    from services.worker_pool.validation import problem, validator_for

    agent = AgentSpec(id="kid", role="r", memory=MemoryPolicy(mode=MemoryMode.SUMMARY, max_turns=3, max_chars=900,
                                                            seed="from your parent"))  # fmt: skip
    step = StepSpec(id="k1", agent_id="kid", instruction="x", tools=("spawn",), sim_latency_ms=5.0,
                    sim_tool_calls=(SimToolCall(tool="spawn", arguments_ref="ref"),))  # fmt: skip
    args = {"agents": [agent.model_dump(mode="json", exclude_defaults=True)],
            "steps": [step.model_dump(mode="json", exclude_defaults=True)]}  # fmt: skip
    _, error = problem(json.dumps(args), validator_for(SpawnTool.parameters))
    assert error is None
    assert SpawnRequest.model_validate(args) == SpawnRequest(agents=(agent,), steps=(step,))


def test_the_spawn_scenario_grows_into_exactly_its_static_dag() -> None:
    from loadtest import metrics
    from loadtest.spawn import spawn_loads
    from swarm.dag import validate_plan

    grown, static = spawn_loads(seed=3, latency_scale=1.0)
    assert len(grown.plan.steps) == 2 and len(static.plan.steps) == 4000 and len(static.plan.agents) == 300
    validate_plan(static.plan)
    from swarm.contracts import MESSAGE_BODY_MAX_BYTES, TaskSubmission

    for load in (grown, static):  # the static DAG in one message; the grown one's scripts by reference
        assert len(TaskSubmission(run_id="r", plan=load.plan).model_dump_json()) < MESSAGE_BODY_MAX_BYTES
    assert max(len(data) for data in grown.scripts.values()) < MESSAGE_BODY_MAX_BYTES // 10
    planned = RunPlanned(run_id="r", tenant="t", goal="g", plan=grown.plan, source="explicit", submitted_at=utc_now())
    run = RunState(planned, max_in_flight=10**6, retry=NO_BACKOFF)
    run.start()
    pending = run.take(10**6)
    while pending:  # every step succeeds, spawning what its script says
        for dispatch in pending:
            spec = run.steps[dispatch.step_id].spec
            spawn = None
            if spec.sim_tool_calls:
                ref = spec.sim_tool_calls[0].arguments_ref
                assert ref is not None
                spawn = SpawnRequest.model_validate(json.loads(grown.scripts[ref]))
            assert not run.apply(result(dispatch.step_id, spawn=spawn)).retried
        pending = run.take(10**6)
    assert len(run.steps) == 4000 and len(run.agents) == 300 and run.count(StepPhase.SUCCEEDED) == 4000
    assert len(run.spawned_by) == 3998
    # Same steps, same latencies (a spawning step's two model calls share its), same critical path.
    grown_latency = {s: st.spec.sim_latency_ms or 0.0 for s, st in run.steps.items()}
    for s in ("root", *(f"L{team}" for team in range(30))):
        grown_latency[s] *= 2
    assert grown_latency == pytest.approx({s.id: s.sim_latency_ms for s in static.plan.steps}, abs=0.2)
    assert metrics.critical_path_s(run.depends_on, {s: v / 1000 for s, v in grown_latency.items()}) == pytest.approx(
        metrics.critical_path_s(static.depends_on, static.latency_s), abs=0.002
    )


def test_the_report_draws_the_dag_growing_from_spawned_events() -> None:
    from swarm.ops.analytics import StepSpan, growth

    spans = [StepSpan(step_id=f"s{i}", agent_id="a", outcome="succeeded", attempts_count=1, queued_at=None,
                      started_at=100.0 + i, finished_at=101.0 + i, run_ms=1, queued_ms=0, prompt_tokens=0,
                      completion_tokens=0) for i in range(7)]  # fmt: skip
    spawns = [{"at_us": 101_500_000, "added_count": 3}, {"at_us": 103_000_000, "added_count": 2}]
    assert growth(spans, spawns) == [(0.0, 2), (1.5, 5), (3.0, 7)]
    assert growth(spans, []) == []
