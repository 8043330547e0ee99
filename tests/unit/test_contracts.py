"""The message models are the published contract: frozen, strict, documented, and the only home of names."""

from __future__ import annotations

import ast
import inspect
import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

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
RUN_EVENT = contracts.RUN_EVENT


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


# --------------------------------------------------------------------------- event kinds and keys


def test_run_event_kind_names_every_run_event() -> None:
    members = contracts.RunEvent.__args__[0].__args__
    kinds = {member.model_fields["kind"].default for member in members}
    assert kinds == set(contracts.RunEventKind)
    for member in members:  # the literal is the enum member, so a renamed kind changes both
        assert member.model_fields["kind"].annotation.__args__[0] is member.model_fields["kind"].default


RUN_EVENT_KINDS = frozenset(kind.value for kind in contracts.RunEventKind)
KIND_CALLS = frozenset({"run_event", "run_kind_all"})
# Key prefixes Keys builds: running markers, lease members, plans by digest, sim scripts; and the streams and
# subjects of buckets, which BucketSpec builds.
KEY_PREFIXES = ("running.", "member.", "plan-sha256-", "sim.", "KV_", "OBJ_", "$KV.", "$O.")


def _name(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _names_kind(node: ast.AST) -> bool:
    name = _name(node).lower()
    return "kind" in name or "run_event" in name


def _strings(node: ast.AST) -> Iterator[ast.Constant]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _strings(element)


def _kind_strings(node: ast.AST) -> Iterator[ast.Constant]:
    """String constants in a place where they can only mean an event kind."""
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        if any(_names_kind(operand) for operand in operands):
            for operand in operands:
                yield from _strings(operand)
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in KIND_CALLS:
            for arg in node.args:
                yield from _strings(arg)
        for keyword in node.keywords:
            if keyword.arg and "kind" in keyword.arg:
                yield from _strings(keyword.value)
    elif isinstance(node, ast.For | ast.comprehension) and _names_kind(node.target):
        yield from _strings(node.iter)
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            if _names_kind(target):
                yield from _strings(node.value)
            elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for name, value in zip(target.elts, node.value.elts, strict=False):
                    if _names_kind(name):
                        yield from _strings(value)


def _is_key_format(node: ast.JoinedStr) -> bool:
    """An f-string that builds a KV/object key or a message id: a run id and parts joined by dots, a key prefix,
    or a run event's id."""
    parts = node.values
    texts = [part.value for part in parts if isinstance(part, ast.Constant)]
    values = [part.value for part in parts if isinstance(part, ast.FormattedValue)]
    if not values:
        return False
    first = parts[0]
    if isinstance(first, ast.Constant) and first.value.startswith(KEY_PREFIXES):
        return True
    for before, part in itertools.pairwise(parts):  # a partition's lease or running markers: 'p<partition>'
        if isinstance(before, ast.Constant) and before.value.endswith("p") and isinstance(part, ast.FormattedValue):
            value = part.value.func if isinstance(part.value, ast.Call) else part.value
            if _name(value) in ("partition", "result_partition"):
                return True
    if isinstance(parts[-1], ast.Constant) and parts[-1].value.lstrip(".") in RUN_EVENT_KINDS:
        return True
    run_scoped = isinstance(first, ast.FormattedValue) and _name(first.value).endswith("run_id")
    return run_scoped and all(text.startswith(".") and set(text) <= set(".>*") for text in texts)


def stray_kinds_and_keys(source: str, filename: str = "<string>") -> Iterator[tuple[int, str]]:
    """(line, what) of every bare run event kind, and every KV/object key or message id built by hand."""
    tree = ast.parse(source, filename)
    # A sampling seed may read like a key ('<run>.<step>.<attempt>.<n>'): it is hashed, never stored.
    seeds = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "encode"}
    for node in ast.walk(tree):
        for constant in _kind_strings(node):
            if constant.value in RUN_EVENT_KINDS:
                yield constant.lineno, f"event kind {constant.value!r}"
        if isinstance(node, ast.JoinedStr) and id(node) not in seeds and _is_key_format(node):
            yield node.lineno, f"key format {ast.unparse(node)}"


def test_stray_kind_and_key_finder() -> None:
    source = '''
if event.kind == "planned": pass
if kind in ("progress", "executed"): pass
subject = Subjects.run_event(tenant, run_id, "cancel")
pattern = Subjects.run_kind_all("cancelled")
for kind in ("completed", "failed"): pass
kind, status = "rejected", RunStatus.REJECTED
INDEXED_RUN_EVENTS = ("planned", *TERMINAL_RUN_EVENTS)
key = f"{run_id}.{step_id}"
watch = f"{executed.run_id}.>"
msg_id = f"{run.run_id}.rejected"
marker = f"running.p{partition}.{run_id}"
markers = f"{RUNNING_MARKER_PREFIX}.p{result_partition(run_id)}.*"
lease = f"p{partition}"
stream = f"KV_{bucket.name}"
subject = f"$KV.{SCRATCHPAD_BUCKET.name}.{key}"
fine = [status == "failed", f"{event_id}.{seq}", f"{run_id}.{step}.{n}".encode(), f"p{quantile}", "planned"]
fine_too = Subjects.run_event(tenant, run_id, RunEventKind.CANCEL), f"{self.prefix}.{token}", kind == RunEventKind.FAILED
'''
    found = [what for _, what in sorted(stray_kinds_and_keys(source))]
    assert found == [
        "event kind 'planned'",
        "event kind 'executed'",
        "event kind 'progress'",
        "event kind 'cancel'",
        "event kind 'cancelled'",
        "event kind 'completed'",
        "event kind 'failed'",
        "event kind 'rejected'",
        "event kind 'planned'",
        "key format f'{run_id}.{step_id}'",
        "key format f'{executed.run_id}.>'",
        "key format f'{run.run_id}.rejected'",
        "key format f'running.p{partition}.{run_id}'",
        "key format f'{RUNNING_MARKER_PREFIX}.p{result_partition(run_id)}.*'",
        "key format f'p{partition}'",
        "key format f'KV_{bucket.name}'",
        "key format f'$KV.{SCRATCHPAD_BUCKET.name}.{key}'",
    ]


def test_no_bare_event_kinds_or_key_formats() -> None:
    files = [path for top in ("libs", "services", "loadtest") for path in sorted((REPO / top).rglob("*.py"))]
    assert CONTRACTS_FILE in files
    violations = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in files
        if path != CONTRACTS_FILE
        for line, what in stray_kinds_and_keys(path.read_text(encoding="utf-8"), str(path))
    ]
    assert not violations, (
        "use RunEventKind, Keys and MsgIds from swarm/contracts.py instead of:\n" + "\n".join(violations)
    )


def test_every_message_budget_is_a_share_of_the_one_limit() -> None:
    body = contracts.MESSAGE_BODY_MAX_BYTES
    assert contracts.MESSAGE_MAX_BYTES - 64 * 1024 < body < contracts.MESSAGE_MAX_BYTES  # room for headers
    # What a dispatch may carry inline (inputs, goal, instructions) stays inside one message body.
    assert contracts.INLINE_INPUTS_MAX_CHARS + 32_000 + 16_000 + 8_000 < body // 2
    assert 16 * contracts.INLINE_OUTPUT_MAX_CHARS <= contracts.INLINE_INPUTS_MAX_CHARS
    assert contracts.PLAN_INLINE_MAX_BYTES < body


# What the run index and the event log store and index: their free text must be bounded.
INDEXED_MODELS = (
    contracts.RunRecord, contracts.StepEvent, contracts.InferenceEvent, contracts.RunRejected, contracts.RunPlanned,
    contracts.RunExecuted, contracts.RunFailed, contracts.RunCancelRequested, contracts.RunCancelled,
    contracts.MissingAgent, contracts.StepResult, contracts.InferenceRequest, contracts.InferenceResponse,
)  # fmt: skip
UNBOUNDED_ON_PURPOSE = {
    ("RunCompleted", "answer"), ("InferenceResponse", "content"),  # not indexed: the answer itself
}


def _unbounded_strings(schema: dict[str, object]) -> list[str]:
    def bounded(prop: dict) -> bool:  # type: ignore[type-arg]
        options = prop.get("anyOf", [prop])
        return all(o.get("type") != "string" or "maxLength" in o or "pattern" in o or "enum" in o or "const" in o or "format" in o
                   for o in options)  # fmt: skip

    return [name for name, prop in schema["properties"].items() if not bounded(prop)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", INDEXED_MODELS, ids=lambda m: m.__name__)
def test_indexed_free_text_is_bounded(model: type[BaseModel]) -> None:
    unbounded = [
        name for name in _unbounded_strings(model.model_json_schema())
        if (model.__name__, name) not in UNBOUNDED_ON_PURPOSE
    ]  # fmt: skip
    assert not unbounded, f"{model.__name__}: free text without a max_length: {unbounded}"


def test_the_finder_of_unbounded_strings() -> None:
    schema = {"properties": {"a": {"type": "string"}, "b": {"type": "string", "maxLength": 3},
                             "c": {"anyOf": [{"type": "string"}, {"type": "null"}]}, "d": {"type": "integer"}}}  # fmt: skip
    assert _unbounded_strings(schema) == ["a", "c"]


def test_cut_marks_what_it_shortens() -> None:
    assert contracts.cut("short", 10) == "short"
    assert contracts.cut("x" * 11, 10) == "x" * 7 + "..."
    goal = contracts.record_goal("g" * 1000)
    assert len(goal) == contracts.RECORD_GOAL_MAX_CHARS and goal.endswith("...")
    contracts.RunRecord(run_id="r", tenant="t", status=contracts.RunStatus.RUNNING, goal=goal)
    with pytest.raises(ValidationError):
        contracts.RunRecord(run_id="r", tenant="t", status=contracts.RunStatus.RUNNING, goal="g" * 1000)


def test_every_contract_schema_is_complete_at_import() -> None:
    """A model naming one defined after it is built at its first use otherwise: on a hot path, in every process."""
    incomplete = [
        name for name, model in vars(contracts).items()
        if inspect.isclass(model) and issubclass(model, BaseModel) and model is not BaseModel
        and not model.__pydantic_complete__
    ]  # fmt: skip
    assert incomplete == []
