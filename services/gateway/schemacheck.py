"""A structural check of a request's JSON Schema, before it reaches any engine.

Backends fail on a malformed schema in their own ways (a grammar compiler's KeyError, an upstream HTTP 400,
a CUDA-side abort); this check turns the common mistakes into one clear error reply. It checks the shape of
the keywords callers use (draft 2020-12 and draft 7), not the whole meta-schema.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from services.gateway.schemagen import schema_key

TYPE_NAMES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
SUBSCHEMA_KEYWORDS = (
    "additionalProperties", "items", "additionalItems", "contains", "propertyNames", "not", "if", "then", "else",
    "unevaluatedProperties", "unevaluatedItems",
)  # fmt: skip
SUBSCHEMA_LIST_KEYWORDS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_MAP_KEYWORDS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
COUNT_KEYWORDS = (
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains",
)  # fmt: skip
NUMBER_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
STRING_KEYWORDS = ("$ref", "$id", "$schema", "format", "title", "description", "$anchor", "$comment")
CACHE_SIZE = 512


class InvalidSchema(ValueError):
    """The JSON Schema is malformed; the message names where."""


def check_schema(schema: Any) -> None:
    """Raise InvalidSchema when `schema` is not a well-formed JSON Schema (checked once per distinct schema)."""
    problem = _problem(schema_key(schema))
    if problem:
        raise InvalidSchema(problem)


@lru_cache(maxsize=CACHE_SIZE)
def _problem(key: str) -> str:
    try:
        _check(json.loads(key), "json_schema")
    except InvalidSchema as exc:
        return str(exc)
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(schema: Any, where: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidSchema(f"{where}: a schema must be an object or a boolean, not {type(schema).__name__}")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or any(not isinstance(k, str) or k not in TYPE_NAMES for k in kinds):
            raise InvalidSchema(
                f"{where}.type: {kind!r} is not a type name (one of {', '.join(sorted(TYPE_NAMES))}) or a list of them"
            )
    for keyword in SUBSCHEMA_KEYWORDS:
        if keyword in schema:
            value = schema[keyword]
            if keyword in ("items", "additionalItems") and isinstance(value, list):  # draft 7 tuple form
                for i, item in enumerate(value):
                    _check(item, f"{where}.{keyword}[{i}]")
            else:
                _check(value, f"{where}.{keyword}")
    for keyword in SUBSCHEMA_LIST_KEYWORDS:
        if keyword in schema:
            value = schema[keyword]
            if not isinstance(value, list) or not value:
                raise InvalidSchema(f"{where}.{keyword}: must be a non-empty list of schemas")
            for i, item in enumerate(value):
                _check(item, f"{where}.{keyword}[{i}]")
    for keyword in SUBSCHEMA_MAP_KEYWORDS:
        if keyword in schema:
            value = schema[keyword]
            if not isinstance(value, dict):
                raise InvalidSchema(f"{where}.{keyword}: must be an object of schemas")
            for name, item in value.items():
                _check(item, f"{where}.{keyword}.{name}")
    for keyword in COUNT_KEYWORDS:
        if keyword in schema:
            value = schema[keyword]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidSchema(f"{where}.{keyword}: must be a non-negative integer, not {value!r}")
    for keyword in NUMBER_KEYWORDS:
        if keyword in schema and not _is_number(schema[keyword]):
            raise InvalidSchema(f"{where}.{keyword}: must be a number, not {schema[keyword]!r}")
    if "multipleOf" in schema and not (_is_number(schema["multipleOf"]) and schema["multipleOf"] > 0):
        raise InvalidSchema(f"{where}.multipleOf: must be a number above 0, not {schema['multipleOf']!r}")
    for keyword in STRING_KEYWORDS:
        if keyword in schema and not isinstance(schema[keyword], str):
            raise InvalidSchema(f"{where}.{keyword}: must be a string, not {schema[keyword]!r}")
    required = schema.get("required")
    if required is not None and (
        not isinstance(required, list) or any(not isinstance(name, str) for name in required)
    ):
        raise InvalidSchema(f"{where}.required: must be a list of property names, not {required!r}")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise InvalidSchema(f"{where}.enum: must be a list, not {schema['enum']!r}")
    if "uniqueItems" in schema and not isinstance(schema["uniqueItems"], bool):
        raise InvalidSchema(f"{where}.uniqueItems: must be a boolean, not {schema['uniqueItems']!r}")
    pattern = schema.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise InvalidSchema(f"{where}.pattern: must be a string, not {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InvalidSchema(f"{where}.pattern: not a regular expression ({exc})") from None
