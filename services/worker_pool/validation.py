"""Structured output: ask the model for JSON under a schema, validate it (schema, and no looping strings), and
repair once when it fails."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator

from services.worker_pool.errors import StepFailed
from swarm.contracts import ChatMessage
from swarm.repetition import degeneracy, words

ERROR_CHARS = 600
# Short strings (names, labels, enum-like values) are not judged: repetition there is the data itself.
MIN_CHECKED_WORDS = 8


@dataclass(frozen=True)
class ModelReply:
    """What one model call returned."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


# (messages, json schema or None) -> reply; the executor's is a gateway call, tests script their own.
ModelFn = Callable[[tuple[ChatMessage, ...], dict[str, Any] | None], Awaitable[ModelReply]]


@lru_cache(maxsize=512)
def _compiled(schema_json: str) -> Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validator_for(schema: dict[str, Any]) -> Validator:
    """A compiled validator, cached per schema; an invalid schema fails the step for good."""
    try:
        return _compiled(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    except SchemaError as exc:
        raise StepFailed(f"output_schema is not a valid JSON Schema: {exc.message}", retryable=False) from exc


def problem(content: str, validator: Validator) -> tuple[Any, str | None]:
    """The parsed document and what is wrong with it (None when it is valid)."""
    try:
        document = json.loads(content)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    error = best_match(validator.iter_errors(document))
    if error is None:
        return document, degenerate_string(document)
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return document, f"{error.message[:ERROR_CHARS]} (at {where})"


def degenerate_string(document: Any, where: str = "") -> str | None:
    """What is wrong with the first string of `document` that is a loop (schema-valid text can still be one)."""
    if isinstance(document, str):
        reason = degeneracy(document) if len(words(document)) >= MIN_CHECKED_WORDS else None
        return f"the string at {where or 'the top level'} is {reason}" if reason else None
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        if reason := degenerate_string(value, f"{where}/{key}" if where else str(key)):
            return reason
    return None


def repair_messages(messages: tuple[ChatMessage, ...], content: str, error: str) -> tuple[ChatMessage, ...]:
    """The conversation, the rejected reply, and what was wrong with it."""
    return (
        *messages,
        ChatMessage(role="assistant", content=content[:4000]),
        ChatMessage(
            role="user",
            content=f"That reply is invalid: {error}. Reply again with only JSON that satisfies the schema.",
        ),
    )


async def structured_output(
    model: ModelFn, messages: tuple[ChatMessage, ...], schema: dict[str, Any], first: str | None = None
) -> str:
    """JSON text valid against `schema`: one call (or `first`, a reply already in hand), then one repair call.

    A second invalid reply fails the attempt (retryable: another attempt samples afresh).
    """
    validator = validator_for(schema)
    content = first if first is not None else (await model(messages, schema)).content
    _, error = problem(content, validator)
    if error is None:
        return content.strip()
    repaired = (await model(repair_messages(messages, content, error), schema)).content
    _, error = problem(repaired, validator)
    if error is not None:
        raise StepFailed(f"output does not satisfy output_schema after a repair attempt: {error}", retryable=True)
    return repaired.strip()
