"""JSON Schemas of the contract's messages: what a message must look like to be accepted.

The runtime validates raw submissions against them (the planner's intake), and `swarm.ops.protogen`
writes them into proto/ for every other client.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from swarm import contracts
from swarm.contracts import CHANNELS, Channel

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def describe_validation_error(exc: ValidationError, max_problems: int | None = None) -> str:
    """Why a message was not accepted, on one line: each problem where it is, without documentation URLs;
    past `max_problems`, how many more there are."""
    errors = exc.errors(include_url=False)
    shown = errors if max_problems is None else errors[:max_problems]
    problems = []
    for error in shown:
        where = ".".join(str(part) for part in error["loc"])
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    more = len(errors) - len(shown)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def model_name(model: Any) -> str:
    """The public name of a message model: the class name, or the contracts alias of a union."""
    if isinstance(model, type):
        return model.__name__
    for name, value in vars(contracts).items():
        if value is model:
            return name
    raise ValueError(f"{model!r} is not named in swarm.contracts")


def channel_models(channels: Iterable[Channel] = CHANNELS) -> dict[str, Any]:
    """Every message and reply model of the channels, by name, in registry order."""
    models: dict[str, Any] = {}
    for channel in channels:
        for model in (channel.message, channel.reply):
            if model is not None:
                models.setdefault(model_name(model), model)
    return models


def json_schema(model: Any, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The validation JSON Schema of a model or union (what a message must look like to be accepted).

    Standard validators in strict mode (ajv) must accept it: a union is `oneOf` over members whose `kind`
    is a required `const`, without pydantic's OpenAPI-style `discriminator`; and every message (a channel's
    model, or a member of its union) requires its envelope, `v` and `kind`, which the services always write.
    """
    schema = _without_discriminator(TypeAdapter(model).json_schema(ref_template=ref_template))
    messages = message_names()
    if schema.get("title") in messages:
        _require_envelope(schema)
    for name, definition in schema.get("$defs", {}).items():
        if name in messages:
            _require_envelope(definition)
    return schema


def message_names(channels: Iterable[Channel] = CHANNELS) -> frozenset[str]:
    """Names of every message model: channel models and replies, a union's members instead of the union."""
    names = set()
    for channel in channels:
        for model in (channel.message, channel.reply):
            if model is not None:
                names.update(union_members(model) or [model_name(model)])
    return frozenset(names)


def _without_discriminator(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _without_discriminator(value) for key, value in schema.items() if key != "discriminator"}
    if isinstance(schema, list):
        return [_without_discriminator(item) for item in schema]
    return schema


def _require_envelope(schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    required = schema.setdefault("required", [])
    for name in ("v", "kind"):
        if name in properties and name not in required:
            required.append(name)


def schema_file(model: Any, name: str) -> dict[str, Any]:
    """A standalone JSON Schema document for one message model."""
    schema = json_schema(model)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"{name}.json"
    schema.setdefault("title", name)
    return schema


def union_members(model: Any) -> list[str]:
    """The member names of a discriminated union's schema, in declaration order; [] for a plain model."""
    raw = TypeAdapter(model).json_schema()
    return [option["$ref"].rsplit("/", 1)[-1] for option in raw.get("oneOf", []) if "$ref" in option]
