"""Planner logic without a server: parsing tasks and LLM output, choosing the plan."""

from __future__ import annotations

import json

import pytest

from services.planner.planning import (
    LLMFailed,
    llm_plan_from_text,
    plan_for_task,
    plan_schema,
    planning_request,
    subquestions_schema,
)
from services.planner.settings import PlannerSettings
from swarm.contracts import (
    InferenceRequest,
    PlanPattern,
    PlanSource,
    TaskSubmission,
)
from swarm.dag import PlanError, PlanLimits
from swarm.inference import InferenceError

GOOD = {
    "agents": [
        {"id": "scout", "role": "researcher", "instructions": "find facts"},
        {"id": "writer", "role": "writer", "instructions": "write it up"},
    ],
    "steps": [
        {"id": "s1", "agent_id": "scout", "instruction": "find facts about bees", "depends_on": []},
        {"id": "s2", "agent_id": "scout", "instruction": "find facts about wasps", "depends_on": []},
        {"id": "s3", "agent_id": "writer", "instruction": "compare them", "depends_on": ["s1", "s2"]},
    ],
}


def test_llm_plan_from_valid_json() -> None:
    plan = llm_plan_from_text(json.dumps(GOOD))
    assert [s.id for s in plan.steps] == ["s1", "s2", "s3"]
    assert plan.steps[2].depends_on == ("s1", "s2")


def test_llm_plan_tolerates_fences_prose_and_control_characters() -> None:
    text = "Here is the plan:\n```json\n" + json.dumps(GOOD).replace("find facts", "find\tfacts") + "\n```\nDone."
    text = text.replace("compare them", "compare\nthem")  # a raw newline inside a JSON string
    plan = llm_plan_from_text(text)
    assert plan.steps[2].instruction == "compare them"
    assert plan.agents[0].instructions == "find facts"


def test_llm_plan_cleans_ids_and_repeated_dependencies() -> None:
    raw = json.loads(json.dumps(GOOD))
    raw["steps"][2]["depends_on"] = ["s1", "s1", "s2"]
    raw["agents"][0]["id"] = "scout agent"
    for step in raw["steps"][:2]:
        step["agent_id"] = "scout agent"
    plan = llm_plan_from_text(json.dumps(raw))
    assert plan.agents[0].id == "scout-agent"
    assert plan.steps[2].depends_on == ("s1", "s2")


@pytest.mark.parametrize(
    "text",
    ["", "   ", "I cannot help with that.", "{not json", "[1, 2, 3]", '{"agents": [], "steps": []}',
     '{"agents": [{"id": "a", "role": "r"}]}', '{"agents": "x", "steps": "y"}'],
)  # fmt: skip
def test_llm_plan_rejects_garbage_and_empty(text: str) -> None:
    with pytest.raises(PlanError):
        llm_plan_from_text(text)


def test_llm_plan_rejects_a_cycle() -> None:
    raw = json.loads(json.dumps(GOOD))
    raw["steps"][0]["depends_on"] = ["s3"]
    with pytest.raises(PlanError, match="cycle"):
        llm_plan_from_text(json.dumps(raw))


def test_llm_plan_rejects_unknown_agents_and_steps() -> None:
    raw = json.loads(json.dumps(GOOD))
    raw["steps"][0]["agent_id"] = "ghost"
    with pytest.raises(PlanError, match="unknown agent"):
        llm_plan_from_text(json.dumps(raw))
    raw = json.loads(json.dumps(GOOD))
    raw["steps"][2]["depends_on"] = ["s9"]
    with pytest.raises(PlanError, match="unknown step"):
        llm_plan_from_text(json.dumps(raw))


def test_llm_plan_respects_limits() -> None:
    with pytest.raises(PlanError, match="limit"):
        llm_plan_from_text(json.dumps(GOOD), PlanLimits(max_agents=300, max_steps=2))


def test_schema_bounds_every_string_and_array() -> None:
    schema = plan_schema(8, 16)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "string":
                assert "maxLength" in node
            if node.get("type") == "array":
                assert "maxItems" in node
            for value in node.values():
                walk(value)

    walk(schema)
    assert schema["properties"]["agents"]["maxItems"] == 8


def test_planning_request_names_the_caller_and_schema() -> None:
    task = TaskSubmission(run_id="r1", goal="plan a trip")
    request = planning_request(task, 4, PlannerSettings())
    assert request.caller == "planner" and request.json_schema and request.run_id == "r1"
    assert "plan a trip" in request.messages[1].content


async def test_plan_for_task_uses_the_llm_plan() -> None:
    async def complete(request: InferenceRequest) -> str:
        return json.dumps(GOOD)

    settings = PlannerSettings(model_capability="capable")
    outcome = await plan_for_task(TaskSubmission(run_id="r1", goal="bees"), settings, complete)
    assert outcome.source is PlanSource.LLM and outcome.note == "" and outcome.llm_schema == "full-plan"


SUBQUESTIONS = {
    "agents": [
        {"role": "solar analyst", "instruction": "How much solar power do Germany, Spain and Norway produce?"},
        {"role": "wind analyst", "instruction": "Compare wind power in Germany, Spain and Norway."},
        {"role": "hydro analyst", "instruction": "Which of the three countries relies most on hydro power?"},
        {"role": "wind analyst", "instruction": "Compare  wind power in Germany, Spain and Norway."},  # a repeat
        {"role": "looper", "instruction": "solar solar solar solar solar solar solar solar solar solar"},
        {"role": "lazy", "instruction": "  "},
        {"role": "pet advisor", "instruction": "Explain which kind of owner suits a cat and which a dog."},  # copied
    ]
}


@pytest.mark.parametrize(
    ("backend", "capability", "schema"),
    [(None, "auto", "sub-questions"), ("llamacpp", "auto", "sub-questions"), ("sim", "auto", "sub-questions"),
     ("trtllm", "auto", "full-plan"), ("openai", "auto", "full-plan"), ("trtllm", "small", "sub-questions"),
     ("llamacpp", "capable", "full-plan")],
)  # fmt: skip
async def test_the_schema_asked_for_follows_the_model_capability(
    backend: str | None, capability: str, schema: str
) -> None:
    asked: list[InferenceRequest] = []

    async def complete(request: InferenceRequest) -> str:
        asked.append(request)
        small = "instructions" not in json.dumps(request.json_schema)
        return json.dumps(SUBQUESTIONS if small else GOOD)

    settings = PlannerSettings(model_capability=capability)  # type: ignore[arg-type]
    goal = "Compare wind, solar and hydro power"
    outcome = await plan_for_task(TaskSubmission(run_id="r1", goal=goal), settings, complete, backend)
    assert outcome.source is PlanSource.LLM and outcome.llm_schema == schema and len(asked) == 1


async def test_small_model_sub_questions_become_a_map_reduce_dag() -> None:
    async def complete(request: InferenceRequest) -> str:
        assert request.json_schema == subquestions_schema(4, 4) and request.caller == "planner"
        return json.dumps(SUBQUESTIONS)

    goal = "Compare solar, wind and hydro power in Germany, Spain and Norway"
    outcome = await plan_for_task(TaskSubmission(run_id="r1", goal=goal), PlannerSettings(), complete, "llamacpp")
    plan = outcome.plan
    # The blank, looping, repeated and off-topic sub-questions are dropped: three agents and a synthesizer remain.
    assert plan.pattern is PlanPattern.MAP_REDUCE and outcome.llm_schema == "sub-questions"
    assert [a.role for a in plan.agents] == ["solar analyst", "wind analyst", "hydro analyst", "synthesizer"]
    assert [s.depends_on for s in plan.steps] == [(), (), (), ("ask-1", "ask-2", "ask-3")]
    assert plan.steps[1].instruction == SUBQUESTIONS["agents"][1]["instruction"]


@pytest.mark.parametrize(
    ("goal", "pattern", "depends_on"),
    [("Which power source is best for Norway: wind, solar or hydro?", PlanPattern.VOTE,
      [(), (), (), ("ask-1", "ask-2", "ask-3")]),
     ("Write a short report on wind and hydro power, then edit it", PlanPattern.PIPELINE,
      [(), ("ask-1",), ("ask-2",)])],
)  # fmt: skip
async def test_the_goal_picks_the_dag_built_around_sub_questions(
    goal: str, pattern: PlanPattern, depends_on: list[tuple[str, ...]]
) -> None:
    async def complete(request: InferenceRequest) -> str:
        return json.dumps(SUBQUESTIONS)

    outcome = await plan_for_task(TaskSubmission(run_id="r1", goal=goal), PlannerSettings(), complete)
    assert outcome.plan.pattern is pattern and [s.depends_on for s in outcome.plan.steps] == depends_on


@pytest.mark.parametrize(
    "reply",
    ['{"agents": []}', json.dumps({"agents": SUBQUESTIONS["agents"][3:]}), "no json at all", ""],
)
async def test_too_few_usable_sub_questions_fall_back_to_the_template(reply: str) -> None:
    async def complete(request: InferenceRequest) -> str:
        return reply

    task = TaskSubmission(run_id="r1", goal="Compare wind and solar power")
    outcome = await plan_for_task(task, PlannerSettings(), complete)
    assert outcome.source is PlanSource.TEMPLATE and "unusable" in outcome.note and outcome.llm_schema is None


def test_sub_questions_schema_is_tiny_and_bounded() -> None:
    items = subquestions_schema(2, 5)["properties"]["agents"]
    assert (items["minItems"], items["maxItems"]) == (2, 5)
    assert set(items["items"]["properties"]) == {"role", "instruction"}
    assert all("maxLength" in p for p in items["items"]["properties"].values())


@pytest.mark.parametrize(
    ("failure", "note"),
    [(InferenceError("no gateway"), "gateway unavailable"), (LLMFailed("engine crashed"), "gateway error"),
     (None, "unusable")],
)  # fmt: skip
async def test_plan_for_task_falls_back_to_the_template(failure: Exception | None, note: str) -> None:
    async def complete(request: InferenceRequest) -> str:
        if failure is not None:
            raise failure
        return '{"agents": [], "steps": []}'

    task = TaskSubmission(run_id="r1", goal="bees", n_agents=3)
    outcome = await plan_for_task(task, PlannerSettings(model_capability="capable"), complete)
    assert outcome.source is PlanSource.TEMPLATE and note in outcome.note
    assert outcome.plan.pattern is PlanPattern.MAP_REDUCE and len(outcome.plan.agents) == 4


async def test_plan_for_task_requested_pattern_skips_the_llm() -> None:
    task = TaskSubmission(run_id="r1", goal="bees", pattern=PlanPattern.VOTE)
    outcome = await plan_for_task(task, PlannerSettings(), None)
    assert outcome.source is PlanSource.TEMPLATE and outcome.plan.pattern is PlanPattern.VOTE


async def test_plan_for_task_rejects_an_invalid_explicit_plan() -> None:
    from swarm.contracts import Plan

    plan = Plan.model_validate({"agents": GOOD["agents"], "steps": [{**GOOD["steps"][0], "depends_on": ["s1"]}]})
    with pytest.raises(PlanError, match="itself"):
        await plan_for_task(TaskSubmission(run_id="r1", plan=plan), PlannerSettings(), None)
