"""Planning logic: parse a submitted task, turn it into a validated plan (explicit, LLM or template)."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from services.planner.settings import PlannerSettings
from services.planner.templates import instantiate, pattern_for_goal, plan_around
from swarm.contracts import (
    ERROR_MAX_CHARS,
    AgentSpec,
    ChatMessage,
    InferenceRequest,
    Plan,
    PlanPattern,
    PlanSource,
    StepSpec,
    TaskSubmission,
    cut,
    is_valid_id,
)
from swarm.dag import PlanError, PlanLimits, validate_plan
from swarm.inference import InferenceError, chat, new_request_id
from swarm.repetition import degeneracy, topic_words, words
from swarm.schemas import describe_validation_error

# What the LLM may write: short strings everywhere (a small model rambles otherwise), ids as subject tokens.
LLM_ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
LLM_ROLE_CHARS = 40
LLM_INSTRUCTIONS_CHARS = 300
LLM_INSTRUCTION_CHARS = 400

PLANNER_SYSTEM_PROMPT = (
    "You are the planner of a team of AI agents. Split the user's goal into agents and steps. "
    "Each agent has an id, a short role and instructions. Each step has an id, the agent_id of the agent "
    "that does it, an instruction, and depends_on: the ids of earlier steps whose results it needs. "
    "Independent steps must not depend on each other, so they run in parallel. "
    "The last step combines the results into the answer. Reply with JSON only."
)


SUBQUESTIONS_SYSTEM_PROMPT = (
    "You split a goal into parts for a team of agents, one part each: a short role and a one-sentence "
    "instruction. Together the parts cover everything the goal names. Reply with JSON only."
)
# A small model copies the shape of an example far better than it follows a description of one; given as an
# earlier turn of the conversation, it is copied less often word for word than when quoted in the prompt.
SUBQUESTIONS_EXAMPLE_GOAL = "Explain how bees make honey"
SUBQUESTIONS_EXAMPLE = {
    "agents": [
        {"role": "biologist", "instruction": "Explain how bees collect nectar from flowers."},
        {"role": "beekeeper", "instruction": "Describe how bees turn nectar into honey inside the hive."},
        {"role": "chemist", "instruction": "Explain what honey is made of and why it keeps so long."},
    ]
}
LLM_SUBQUESTION_CHARS = 120
LLM_SUBQUESTION_MIN_CHARS = 15
MIN_SUBQUESTIONS = 2
MAX_TEMPERATURE = 1.5
RESAMPLE_TEMPERATURE_STEP = 0.3
MIN_SUBQUESTION_WORDS = 3  # an instruction of fewer words is a label or digits, not a question

# How a plan is asked of the LLM (RunPlanned.llm_schema): a few sub-questions, or agents and steps.
LlmSchema = Literal["sub-questions", "full-plan"]
SUBQUESTIONS: LlmSchema = "sub-questions"
FULL_PLAN: LlmSchema = "full-plan"
# The planning schema a backend's models can fill: the CPU model and the simulator get the tiny one.
BACKEND_CAPABILITY: dict[str, Literal["small", "capable"]] = {
    "llamacpp": "small", "sim": "small", "openai": "capable", "trtllm": "capable",
}  # fmt: skip


@dataclass(frozen=True)
class PlanOutcome:
    """A validated plan and where it came from."""

    plan: Plan
    source: PlanSource
    note: str = ""
    llm_schema: LlmSchema | None = None


# --------------------------------------------------------------------------- tasks


def goal_of(task: TaskSubmission) -> str:
    """The goal, or a description of an explicit plan without one."""
    if task.goal is not None:
        return task.goal
    assert task.plan is not None  # TaskSubmission guarantees a goal or a plan
    return f"explicit plan: {len(task.plan.agents)} agents, {len(task.plan.steps)} steps"


# --------------------------------------------------------------------------- LLM plans


def plan_schema(max_agents: int, max_steps: int) -> dict[str, Any]:
    """The JSON Schema a planning completion is constrained to: bounded arrays, bounded strings."""
    id_schema = {"type": "string", "pattern": LLM_ID_PATTERN, "maxLength": 32}
    return {
        "type": "object",
        "properties": {
            "agents": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_agents,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": id_schema,
                        "role": {"type": "string", "minLength": 1, "maxLength": LLM_ROLE_CHARS},
                        "instructions": {"type": "string", "maxLength": LLM_INSTRUCTIONS_CHARS},
                    },
                    "required": ["id", "role", "instructions"],
                    "additionalProperties": False,
                },
            },
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_steps,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": id_schema,
                        "agent_id": id_schema,
                        "instruction": {"type": "string", "minLength": 1, "maxLength": LLM_INSTRUCTION_CHARS},
                        "depends_on": {"type": "array", "maxItems": max_steps, "items": id_schema},
                    },
                    "required": ["id", "agent_id", "instruction", "depends_on"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["agents", "steps"],
        "additionalProperties": False,
    }


def planning_request(task: TaskSubmission, n_agents: int, settings: PlannerSettings) -> InferenceRequest:
    """The gateway request that asks the model to decompose the task's goal."""
    max_agents = min(settings.llm_max_agents, settings.max_agents)
    max_steps = min(settings.llm_max_steps, settings.max_steps)
    user = f"Goal: {task.goal}\nUse about {min(n_agents, max_agents)} agents and at most {max_steps} steps."
    return InferenceRequest(
        request_id=new_request_id(),
        model=settings.llm_model,
        messages=chat(PLANNER_SYSTEM_PROMPT, user),
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
        json_schema=plan_schema(max_agents, max_steps),
        run_id=task.run_id,
        caller="planner",
    )


def subquestions_schema(min_items: int, max_items: int) -> dict[str, Any]:
    """The tiny schema a small model fills: a list of agents, each a role and a one-sentence instruction."""
    return {
        "type": "object",
        "properties": {
            "agents": {
                "type": "array",
                "minItems": min_items,
                "maxItems": max_items,
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"type": "string", "minLength": 3, "maxLength": LLM_ROLE_CHARS},
                        "instruction": {
                            "type": "string",
                            "minLength": LLM_SUBQUESTION_MIN_CHARS,
                            "maxLength": LLM_SUBQUESTION_CHARS,
                        },
                    },
                    "required": ["role", "instruction"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["agents"],
        "additionalProperties": False,
    }


def subquestions_request(
    task: TaskSubmission, n_agents: int, settings: PlannerSettings, sample: int = 0
) -> InferenceRequest:
    """The gateway request that asks a small model for the goal's sub-questions; a later `sample` is drawn
    with another seed, hotter."""
    n = max(MIN_SUBQUESTIONS, min(n_agents, settings.llm_max_agents, settings.max_agents - 1))
    return InferenceRequest(
        request_id=new_request_id(),
        model=settings.llm_model,
        messages=(
            *chat(SUBQUESTIONS_SYSTEM_PROMPT, f"Goal: {SUBQUESTIONS_EXAMPLE_GOAL}\nList 3 agents."),
            ChatMessage(role="assistant", content=json.dumps(SUBQUESTIONS_EXAMPLE)),
            ChatMessage(role="user", content=f"Goal: {task.goal}\nList {n} agents."),
        ),
        max_tokens=settings.llm_max_tokens,
        temperature=min(MAX_TEMPERATURE, settings.llm_temperature + sample * RESAMPLE_TEMPERATURE_STEP),
        seed=zlib.crc32(f"{task.run_id}.plan.{sample}".encode()),
        json_schema=subquestions_schema(n, n),
        run_id=task.run_id,
        caller="planner",
    )


# A copy of the example is about the example's subject, not the goal's.
_EXAMPLE_WORDS = frozenset(topic_words(f"{SUBQUESTIONS_EXAMPLE_GOAL} {json.dumps(SUBQUESTIONS_EXAMPLE)}"))


def subquestions_from_text(text: str, goal: str) -> list[tuple[str, str]]:
    """The usable (role, instruction) pairs of a small model's reply to `goal`.

    Dropped: blank, looping and repeated instructions, and those about nothing the goal names (a small model
    copies the example). Raises PlanError when fewer than two are left: one agent is no decomposition.
    """
    if not text.strip():
        raise PlanError("the model's output is empty")
    goal_topics = set(topic_words(goal)) - _EXAMPLE_WORDS
    proposed: dict[str, tuple[str, str]] = {}
    for raw in _items(_json_object(text), "agents"):
        instruction = _text(raw.get("instruction"), LLM_SUBQUESTION_CHARS * 2)
        prose = [w for w in words(instruction) if w.isalpha()]
        on_topic = bool(goal_topics & set(topic_words(instruction)))
        if len(prose) < MIN_SUBQUESTION_WORDS or degeneracy(instruction) or not on_topic:
            continue
        role = _text(raw.get("role"), LLM_ROLE_CHARS) or "researcher"
        proposed.setdefault(" ".join(words(instruction)), (role, instruction))
    if len(proposed) < MIN_SUBQUESTIONS:
        raise PlanError(
            f"the model proposed {len(proposed)} usable distinct sub-questions, fewer than {MIN_SUBQUESTIONS}"
        )
    return list(proposed.values())


_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def _json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a completion: tolerates code fences, prose around it, control characters."""
    fenced = _FENCE_RE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder(strict=False)  # small models put raw newlines and tabs inside strings
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except ValueError:
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):
                return value
            start = candidate.find("{", start + 1)
    raise PlanError("the model's output holds no JSON object")


def _clean_id(value: object, what: str) -> str:
    """An id as the model wrote it, with characters no subject token may hold replaced."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise PlanError(f"{what} id is missing or not a string")
    cleaned = _BAD_ID_CHARS.sub("-", str(value).strip()).strip("-")[:64]
    if not is_valid_id(cleaned):
        raise PlanError(f"{what} id {str(value)[:40]!r} is not usable")
    return cleaned


def _text(value: object, limit: int) -> str:
    return " ".join(str(value).split())[:limit] if isinstance(value, str | int | float) else ""


def _items(obj: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        raise PlanError(f"the model's plan has no {key}")
    items = [item for item in value if isinstance(item, dict)]
    if len(items) != len(value):
        raise PlanError(f"the model's {key} are not all objects")
    return items


def llm_plan_from_text(text: str, limits: PlanLimits | None = None) -> Plan:
    """A validated plan from a model's completion; raises PlanError on garbage, empty or invalid plans."""
    try:
        plan = _plan_from_text(text)
    except ValidationError as exc:
        raise PlanError(f"the model's plan is invalid: {describe_validation_error(exc)}") from exc
    validate_plan(plan, limits)
    return plan


def _plan_from_text(text: str) -> Plan:
    if not text.strip():
        raise PlanError("the model's output is empty")
    obj = _json_object(text)
    agents = []
    for raw in _items(obj, "agents"):
        agents.append(
            AgentSpec(
                id=_clean_id(raw.get("id"), "agent"),
                role=_text(raw.get("role"), 200) or "agent",
                instructions=_text(raw.get("instructions"), 8000),
            )
        )
    only_agent = agents[0].id if len(agents) == 1 else None
    steps = []
    for raw in _items(obj, "steps"):
        step_id = _clean_id(raw.get("id"), "step")
        instruction = _text(raw.get("instruction"), 16000)
        if not instruction:
            raise PlanError(f"step {step_id} has no instruction")
        raw_agent = raw.get("agent_id")
        agent_id = only_agent if raw_agent in (None, "") and only_agent else _clean_id(raw_agent, "agent")
        deps = raw.get("depends_on") or []
        if not isinstance(deps, list):
            deps = [deps]
        depends_on = tuple(dict.fromkeys(_clean_id(d, "dependency") for d in deps))
        steps.append(StepSpec(id=step_id, agent_id=agent_id, instruction=instruction, depends_on=depends_on))
    return Plan(agents=tuple(agents), steps=tuple(steps))


# --------------------------------------------------------------------------- plans for tasks

Complete = Callable[[InferenceRequest], Awaitable[str]]
"""Ask the gateway: the completion text, or raises InferenceError (absent) / LLMFailed (answered not ok)."""


class LLMFailed(RuntimeError):
    """The gateway answered, without a completion."""


def template_outcome(task: TaskSubmission, pattern: PlanPattern, settings: PlannerSettings, note: str) -> PlanOutcome:
    """The plan of a pattern template for the task's goal, validated."""
    assert task.goal is not None
    plan = instantiate(pattern, task.goal, task.n_agents or settings.default_n_agents, settings.limits,
                       settings.reduce_fan_in)  # fmt: skip
    validate_plan(plan, settings.limits)
    return PlanOutcome(plan, PlanSource.TEMPLATE, cut(note, ERROR_MAX_CHARS))


async def sample_subquestions(
    task: TaskSubmission, n_agents: int, settings: PlannerSettings, complete: Complete
) -> list[tuple[str, str]]:
    """A small model's usable sub-questions, sampled again (new seed, hotter) up to `llm_samples` times."""
    error = PlanError("no planning call was made")
    for sample in range(settings.llm_samples):
        reply = await complete(subquestions_request(task, n_agents, settings, sample))
        try:
            return subquestions_from_text(reply, task.goal or "")
        except PlanError as exc:
            error = exc
    raise error


def capability_of(settings: PlannerSettings, backend: str | None) -> Literal["small", "capable"]:
    """What the planning model can do: the setting, else the gateway backend's default (small when unknown)."""
    if settings.model_capability != "auto":
        return settings.model_capability
    return BACKEND_CAPABILITY.get(backend or "", "small")


async def plan_for_task(
    task: TaskSubmission, settings: PlannerSettings, complete: Complete | None, backend: str | None = None
) -> PlanOutcome:
    """Decide the run's plan: the explicit one (validated), a requested template, the LLM's, or the fallback.

    A small model (see `capability_of`; `backend` is the gateway's) only proposes sub-questions, and code
    builds the DAG around them; a capable one writes the whole plan. Raises PlanError only for an explicit
    plan that is invalid: that rejects the task.
    """
    if task.plan is not None:
        validate_plan(task.plan, settings.limits)
        return PlanOutcome(task.plan, PlanSource.EXPLICIT)
    if task.pattern is not None:
        return template_outcome(task, task.pattern, settings, f"pattern {task.pattern.value} requested")
    fallback = settings.fallback_pattern.value
    if complete is None or not settings.llm_enabled:
        return template_outcome(task, settings.fallback_pattern, settings, f"LLM planning disabled; {fallback} template")
    n_agents = task.n_agents or settings.default_n_agents
    small = capability_of(settings, backend) == "small"
    try:
        if small:
            proposed = await sample_subquestions(task, n_agents, settings, complete)
            pattern = pattern_for_goal(task.goal or "")
            plan = plan_around(pattern, task.goal or "", proposed, settings.limits, settings.reduce_fan_in)
            validate_plan(plan, settings.limits)
        else:
            plan = llm_plan_from_text(await complete(planning_request(task, n_agents, settings)), settings.limits)
    except InferenceError as exc:
        why = f"gateway unavailable ({exc})"
    except LLMFailed as exc:
        why = f"gateway error ({exc})"
    except PlanError as exc:
        why = f"the model's plan was unusable ({cut(str(exc), 300)})"
    else:
        return PlanOutcome(plan, PlanSource.LLM, llm_schema=SUBQUESTIONS if small else FULL_PLAN)
    return template_outcome(task, settings.fallback_pattern, settings, f"{why}; {fallback} template used")
