"""Intake of a submitted task: every check a message must pass before planning, each failure a structured reason.

The body is validated against proto/'s own TaskSubmission schema first, so a client that validates with any
JSON Schema validator (ajv, jsonschema) sees the same rules and the same keyword codes; then come the rules a
schema cannot state (headers, subject); pydantic's model last, as the final word.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from nats.js.api import Header
from pydantic import ValidationError

from swarm.contracts import (
    DEFAULT_TENANT,
    REJECTION_MAX_REASONS,
    RejectionCode,
    RejectionReason,
    Subjects,
    TaskSubmission,
    is_valid_id,
)
from swarm.dag import PlanError
from swarm.payloads import PlanStore, PlanUnavailable
from swarm.schemas import schema_file

MAX_ERROR_CHARS = 4000
REASON_CHARS = 300
TASK_SUBJECT_PREFIX = Subjects.task("")
MSG_ID_HEADER = Header.MSG_ID.value

# pydantic error types -> the JSON Schema keyword they correspond to (reasons the schema stage let through).
_PYDANTIC_CODES = {
    "missing": RejectionCode.REQUIRED,
    "extra_forbidden": RejectionCode.ADDITIONAL_PROPERTIES,
    "string_pattern_mismatch": RejectionCode.PATTERN,
    "string_too_short": RejectionCode.MIN_LENGTH,
    "string_too_long": RejectionCode.MAX_LENGTH,
    "too_short": RejectionCode.MIN_ITEMS,
    "too_long": RejectionCode.MAX_ITEMS,
    "greater_than_equal": RejectionCode.MINIMUM,
    "greater_than": RejectionCode.EXCLUSIVE_MINIMUM,
    "less_than_equal": RejectionCode.MAXIMUM,
    "less_than": RejectionCode.EXCLUSIVE_MAXIMUM,
    "literal_error": RejectionCode.CONST,
    "enum": RejectionCode.ENUM,
    "timezone_aware": RejectionCode.FORMAT,
    "datetime_parsing": RejectionCode.FORMAT,
    "datetime_from_date_parsing": RejectionCode.FORMAT,
    "json_invalid": RejectionCode.JSON,
}


class TaskRejected(ValueError):
    """A task that can never be planned: the run identity to report it under, and why."""

    def __init__(self, run_id: str, tenant: str, reasons: Iterable[RejectionReason]) -> None:
        self.run_id = run_id
        self.tenant = tenant
        self.reasons = tuple(reasons)[:REJECTION_MAX_REASONS]
        self.error = describe(self.reasons)
        super().__init__(self.error)


def describe(reasons: Iterable[RejectionReason]) -> str:
    """Every reason on one line: the prose `error` of a RunRejected."""
    text = "invalid task: " + "; ".join(f"{r.path or '(message)'}: {r.message}" for r in reasons)
    return text[:MAX_ERROR_CHARS]


def reason(path: str, code: RejectionCode, message: str) -> RejectionReason:
    """A RejectionReason with its message cut to size."""
    return RejectionReason(path=path[:1000], code=code, message=message[:REASON_CHARS])


def plan_reason(exc: PlanError, explicit: bool) -> RejectionReason:
    """The reason of a plan that cannot run: its rule under /plan when the client wrote it, else plan_failed."""
    if explicit:
        return reason(f"/plan{exc.path}", exc.code, str(exc))
    return reason("", RejectionCode.PLAN_FAILED, f"no valid plan could be made for the goal: {exc}")


# --------------------------------------------------------------------------- the checks


def subject_tenant(subject: str) -> str | None:
    """The tenant a task subject names, or None when it names none."""
    token = subject.removeprefix(TASK_SUBJECT_PREFIX)
    return token if token != subject and is_valid_id(token) else None


def parse_task(data: bytes, subject: str, headers: Mapping[str, str] | None) -> TaskSubmission:
    """The task in a message; raises TaskRejected, with every reason found, when it breaks a rule."""
    tenant = subject_tenant(subject)
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    try:
        body: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskRejected(
            _usable(msg_id) or _generated_id(), tenant or DEFAULT_TENANT,
            [reason("", RejectionCode.JSON, f"the body is not JSON: {exc}")],
        ) from exc  # fmt: skip
    if isinstance(body, dict) and "tenant" not in body and tenant is not None:
        body = {**body, "tenant": tenant}  # the documented default: the subject's tenant
    run_id = (_usable(body.get("run_id")) if isinstance(body, dict) else None) or _usable(msg_id) or _generated_id()

    reasons = schema_reasons(body)
    if tenant is None:
        reasons.append(reason("", RejectionCode.TENANT_MISMATCH, f"the subject {json.dumps(subject)} names no tenant"))
    elif isinstance(body, dict) and isinstance(body.get("tenant"), str) and body["tenant"] != tenant:
        reasons.append(reason(
            "/tenant", RejectionCode.TENANT_MISMATCH,
            f"is {json.dumps(body['tenant'])}, but the task was published on the subject of tenant {json.dumps(tenant)}",
        ))  # fmt: skip
    if msg_id is None:
        reasons.append(reason("", RejectionCode.MSG_ID_MISSING, f"the {MSG_ID_HEADER} header (the run_id) is missing"))
    elif isinstance(body, dict) and isinstance(body.get("run_id"), str) and body["run_id"] != msg_id:
        reasons.append(reason(
            "/run_id", RejectionCode.MSG_ID_MISMATCH,
            f"is {json.dumps(body['run_id'])}, but the {MSG_ID_HEADER} header is {json.dumps(msg_id)}: they must be equal",
        ))  # fmt: skip
    if reasons:
        raise TaskRejected(run_id, tenant or DEFAULT_TENANT, reasons)
    try:
        return TaskSubmission.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise TaskRejected(run_id, tenant or DEFAULT_TENANT, pydantic_reasons(exc)) from exc


async def resolve_plan_ref(task: TaskSubmission, plans: PlanStore) -> TaskSubmission:
    """The task with its referenced plan inline (in memory), checked by the same rules as an inline plan.

    The plan's reasons carry paths under /plan, as if it had been sent inline; a reference that cannot be
    honoured is rejected under /plan_ref. NATS errors propagate (the task is retried).
    """
    if task.plan_ref is None:
        return task
    try:
        data = await plans.get_bytes(task.plan_ref)
    except PlanUnavailable as exc:
        raise TaskRejected(task.run_id, task.tenant, [reason("/plan_ref", RejectionCode.PLAN_UNAVAILABLE, str(exc))]) from exc
    try:
        plan: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskRejected(task.run_id, task.tenant, [reason("/plan_ref", RejectionCode.JSON, f"the plan is not JSON: {exc}")]) from exc
    body = {**task.model_dump(mode="json", exclude={"plan_ref"}), "plan": plan}
    reasons = schema_reasons(body)
    if reasons:
        raise TaskRejected(task.run_id, task.tenant, reasons)
    try:
        return TaskSubmission.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise TaskRejected(task.run_id, task.tenant, pydantic_reasons(exc)) from exc


def _usable(value: object) -> str | None:
    return value if isinstance(value, str) and is_valid_id(value) else None


def _generated_id() -> str:
    # Nobody follows this id: the rejection is still published (and logged) so the task leaves a trace.
    return f"rejected-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- JSON Schema stage


@cache
def task_schema_validator() -> Draft202012Validator:
    """A validator of proto/schemas/TaskSubmission.json (generated from the same model), formats checked."""
    schema = schema_file(TaskSubmission, "TaskSubmission")
    return Draft202012Validator(schema, format_checker=FormatChecker())


@cache
def _fast_task_schema_validator() -> Any:
    # jsonschema-rs answers valid-or-not about 1,000 times faster (a 4,000-step plan: ~2 ms, not ~2 s);
    # python-jsonschema, whose errors carry what the reasons need, runs only on what it finds invalid.
    return jsonschema_rs.validator_for(schema_file(TaskSubmission, "TaskSubmission"), validate_formats=True)


def schema_reasons(body: Any) -> list[RejectionReason]:
    """Why `body` is not valid against the TaskSubmission schema, one reason per broken rule, sorted by path."""
    if _fast_task_schema_validator().is_valid(body):
        return []
    reasons: dict[tuple[str, str], RejectionReason] = {}
    for error in task_schema_validator().iter_errors(body):
        for found in _reasons_of(error):
            reasons.setdefault((found.path, found.code), found)
    return sorted(reasons.values(), key=lambda r: (r.path, r.code))


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _reasons_of(error: SchemaError) -> list[RejectionReason]:
    path = _pointer(error.absolute_path)
    keyword = str(error.validator)
    if keyword == "anyOf" and not error.absolute_path:
        # The schema's one root anyOf: "a goal or a plan".
        return [reason("", RejectionCode.ANY_OF, "a task needs a goal (a non-blank string) or a plan (an object)")]
    if keyword in ("anyOf", "oneOf") and error.context:
        # A nullable field (anyOf [T, null]): report why the value is no good as T, not that it is not null.
        best = best_match(e for e in error.context if not (e.validator == "type" and e.validator_value == "null"))
        return _reasons_of(best) if best is not None else []
    instance, value = error.instance, error.validator_value
    if keyword == "required" and isinstance(instance, dict):
        return [
            reason(f"{path}{_pointer([name])}", RejectionCode.REQUIRED, "is required")
            for name in value if name not in instance
        ]  # fmt: skip
    if keyword == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        return [
            reason(f"{path}{_pointer([name])}", RejectionCode.ADDITIONAL_PROPERTIES, "is not a known property")
            for name in instance if name not in known
        ]  # fmt: skip
    try:
        code = RejectionCode(keyword)
    except ValueError:
        code = RejectionCode.INVALID
    message = _schema_message(code, value, error.message)
    if "propertyNames" in error.absolute_schema_path:
        # The instance is a key of the object at `path`, not a value.
        return [reason(path, RejectionCode.PROPERTY_NAMES, f"has a key {json.dumps(instance)} that {message}")]
    return [reason(path, code, message)]


def _schema_message(code: RejectionCode, value: Any, fallback: str) -> str:
    """The reason in words, JSON-flavoured ('must be string'), not Python's repr of the value."""
    match code:
        case RejectionCode.TYPE:
            return f"must be {' or '.join(value) if isinstance(value, list) else value}"
        case RejectionCode.PATTERN:
            return "must not be blank" if value == r"\S" else f"must match the pattern {value}"
        case RejectionCode.FORMAT:
            if value == "date-time":
                return "must be an RFC 3339 date-time with a time zone offset, e.g. 2025-01-01T00:00:00Z"
            return f"must be a valid {value}"
        case RejectionCode.MIN_LENGTH:
            return f"must have at least {value} characters"
        case RejectionCode.MAX_LENGTH:
            return f"must have at most {value} characters"
        case RejectionCode.MIN_ITEMS:
            return f"must have at least {value} items"
        case RejectionCode.MAX_ITEMS:
            return f"must have at most {value} items"
        case RejectionCode.MAX_PROPERTIES:
            return f"must have at most {value} entries"
        case RejectionCode.MINIMUM:
            return f"must be >= {value}"
        case RejectionCode.MAXIMUM:
            return f"must be <= {value}"
        case RejectionCode.EXCLUSIVE_MINIMUM:
            return f"must be > {value}"
        case RejectionCode.EXCLUSIVE_MAXIMUM:
            return f"must be < {value}"
        case RejectionCode.CONST:
            return f"must be {json.dumps(value)}"
        case RejectionCode.ENUM:
            return f"must be one of {', '.join(json.dumps(v) for v in value)}"
    return fallback


# --------------------------------------------------------------------------- pydantic stage


def pydantic_reasons(exc: ValidationError) -> list[RejectionReason]:
    """Reasons from the model's own validation (what the schema stage could not see)."""
    reasons = []
    for error in exc.errors(include_url=False):
        path = _pointer(part for part in error["loc"] if not _is_union_tag(part))
        code = _PYDANTIC_CODES.get(error["type"])
        if code is None:
            code = RejectionCode.TYPE if error["type"].endswith(("_type", "_parsing")) else RejectionCode.INVALID
        message = str(error["msg"]).removeprefix("Value error, ")
        if code is RejectionCode.FORMAT:
            message = "must be an RFC 3339 date-time with a time zone offset, e.g. 2025-01-01T00:00:00Z"
        reasons.append(reason(path, code, message))
    return reasons


def _is_union_tag(part: int | str) -> bool:
    # pydantic puts the validator it tried into `loc` ('function-after[...]'): no field of the body.
    return isinstance(part, str) and "[" in part
