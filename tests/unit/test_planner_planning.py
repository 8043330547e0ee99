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

    outcome = await plan_for_task(TaskSubmission(run_id="r1", goal="bees"), PlannerSettings(), complete)
    assert outcome.source is PlanSource.LLM and outcome.note == ""


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
    outcome = await plan_for_task(task, PlannerSettings(), complete)
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
