"""The message models are the published contract: frozen, strict, documented, and the only home of names."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from swarm import contracts
from swarm.contracts import (
    AgentSpec,
    Contract,
    Plan,
    RunCancelRequested,
    RunCompleted,
    RunSummary,
    StepResult,
    StepSpec,
    StepStatus,
    TaskSubmission,
)

REPO = Path(__file__).resolve().parents[2]
CONTRACTS_FILE = REPO / "libs" / "swarm" / "contracts.py"

MESSAGE_MODELS = sorted(
    (
        obj
        for obj in vars(contracts).values()
        if inspect.isclass(obj) and issubclass(obj, Contract) and obj.__module__ == contracts.__name__
    ),
    key=lambda model: model.__name__,
)
RUN_EVENT = TypeAdapter(contracts.RunEvent)


def _plan() -> Plan:
    return Plan(
        agents=(AgentSpec(id="a1", role="researcher"),),
        steps=(StepSpec(id="s1", agent_id="a1", instruction="look it up"),),
    )


def _summary() -> RunSummary:
    return RunSummary(
        agents_count=1, steps_total=1, steps_succeeded=1, steps_failed=0, retries_count=0,
        prompt_tokens=10, completion_tokens=5, wall_ms=12.5,
    )


# --------------------------------------------------------------------------- every model


def test_models_are_found() -> None:
    names = {model.__name__ for model in MESSAGE_MODELS}
    assert {"TaskSubmission", "StepDispatch", "StepResult", "RunCompleted", "InferenceRequest"} <= names


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
def test_model_is_frozen_and_forbids_extra_fields(model: type[BaseModel]) -> None:
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    undocumented = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not undocumented, f"{model.__name__}: fields without a description: {undocumented}"
    assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring"


@pytest.mark.parametrize("model", MESSAGE_MODELS, ids=lambda m: m.__name__)
def test_every_model_is_versioned(model: type[BaseModel]) -> None:
    assert model.model_fields["v"].default == contracts.CONTRACT_VERSION


def test_frozen_instance_rejects_assignment() -> None:
    task = TaskSubmission(run_id="r1", goal="g")
    with pytest.raises(ValidationError):
        task.goal = "other"  # type: ignore[misc]


def test_extra_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        TaskSubmission.model_validate({"run_id": "r1", "goal": "g", "unknown": 1})


# --------------------------------------------------------------------------- tasks


def test_task_needs_goal_or_plan() -> None:
    with pytest.raises(ValidationError, match="goal or a plan"):
        TaskSubmission(run_id="r1")
    assert TaskSubmission(run_id="r1", plan=_plan()).goal is None
    assert TaskSubmission(run_id="r1", goal="compare").plan is None


@pytest.mark.parametrize("goal", ["", "   ", "\n\t"])
def test_task_rejects_empty_goal(goal: str) -> None:
    with pytest.raises(ValidationError, match="goal"):
        TaskSubmission(run_id="r1", goal=goal)
    with pytest.raises(ValidationError):
        TaskSubmission(run_id="r1", goal=goal, plan=_plan())


@pytest.mark.parametrize("run_id", ["", "has space", "a.b", "x" * 65, "swarm.>"])
def test_ids_are_subject_safe(run_id: str) -> None:
    with pytest.raises(ValidationError):
        TaskSubmission(run_id=run_id, goal="g")
    assert not contracts.is_valid_id(run_id)


def test_task_defaults() -> None:
    task = TaskSubmission(run_id="r1", goal="g")
    assert task.tenant == contracts.DEFAULT_TENANT
    assert task.v == contracts.CONTRACT_VERSION
    assert task.submitted_at.tzinfo is not None


# --------------------------------------------------------------------------- run events


def test_run_event_discriminates_by_kind() -> None:
    event = RUN_EVENT.validate_python({"kind": "cancel", "run_id": "r1", "tenant": "t1"})
    assert isinstance(event, RunCancelRequested)
    completed = RUN_EVENT.validate_json(
        RunCompleted(run_id="r1", tenant="t1", answer="42", summary=_summary()).model_dump_json()
    )
    assert isinstance(completed, RunCompleted)
    with pytest.raises(ValidationError):
        RUN_EVENT.validate_python({"kind": "nonsense", "run_id": "r1", "tenant": "t1"})
    with pytest.raises(ValidationError):  # a completed event without its answer is not some other kind
        RUN_EVENT.validate_python({"kind": "completed", "run_id": "r1", "tenant": "t1"})


def test_every_run_event_kind_is_distinct_and_terminal_kinds_exist() -> None:
    members = contracts.RunEvent.__args__[0].__args__  # Annotated[Union[...], Field] -> union members
    kinds = [member.model_fields["kind"].default for member in members]
    assert len(kinds) == len(set(kinds))
    assert set(contracts.TERMINAL_RUN_EVENTS) <= set(kinds)


# --------------------------------------------------------------------------- round trips


def _samples() -> list[BaseModel]:
    at = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    return [
        TaskSubmission(run_id="r1", goal="compare", labels={"team": "x"}, submitted_at=at),
        TaskSubmission(run_id="r2", plan=_plan(), submitted_at=at),
        StepResult(
            run_id="r1", step_id="s1", attempt=2, status=StepStatus.FAILED, error="boom",
            started_at=at, finished_at=at, worker_id="w1",
        ),
        RunCompleted(run_id="r1", tenant="t1", answer="42", summary=_summary(), at=at),
    ]


@pytest.mark.parametrize("message", _samples(), ids=lambda m: type(m).__name__)
def test_round_trip_json(message: BaseModel) -> None:
    restored = type(message).model_validate_json(message.model_dump_json())
    assert restored == message


def test_run_event_round_trip_through_the_union() -> None:
    event = RunCompleted(run_id="r1", tenant="t1", answer="42", summary=_summary())
    assert RUN_EVENT.validate_json(RUN_EVENT.dump_json(event)) == event


# --------------------------------------------------------------------------- stray literals

SUBJECT_LITERAL = re.compile(r"^swarm\.(tasks|steps|results|run|events|infer|health|recorder)\b")
STREAM_NAMES = frozenset(stream.name for stream in contracts.ALL_STREAMS)
BUCKET_NAMES = frozenset(bucket.name for bucket in contracts.ALL_BUCKETS)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                nodes.add(id(first.value))
    return nodes


def stray_literals(source: str, filename: str = "<string>") -> Iterator[tuple[int, str]]:
    """(line, literal) of every string constant that spells a subject, stream or bucket name."""
    tree = ast.parse(source, filename)
    docstrings = _docstring_nodes(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        value = node.value
        if SUBJECT_LITERAL.match(value) or value in STREAM_NAMES or value in BUCKET_NAMES:
            yield node.lineno, value


def test_stray_literal_finder() -> None:
    source = '''
"""Docstrings may mention swarm.tasks.<tenant>."""
A = "swarm.tasks.default"
B = f"swarm.run.{tenant}.{run_id}.>"
C = "RUNS"
D = "swarm_run_state"
E = "swarm.contracts"
F = "swarm.runs_total"
G = "RUNS are fine inside a sentence"
'''
    found = [value for _, value in sorted(stray_literals(source))]
    assert found == ["swarm.tasks.default", "swarm.run.", "RUNS", "swarm_run_state"]


def test_no_stray_subject_or_stream_literals() -> None:
    files = sorted((REPO / "libs").rglob("*.py")) + sorted((REPO / "services").rglob("*.py"))
    assert CONTRACTS_FILE in files
    violations = [
        f"{path.relative_to(REPO)}:{line}: {value!r}"
        for path in files
        if path != CONTRACTS_FILE
        for line, value in stray_literals(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not violations, "write subjects and stream names only in swarm/contracts.py:\n" + "\n".join(violations)
