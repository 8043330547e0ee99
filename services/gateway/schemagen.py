"""Documents that validate against a JSON Schema, for the sim backend: compiled once per schema, seeded per call.

Covers what callers send in practice (pydantic-generated schemas included): type (or a list of types),
object properties / required / additionalProperties / min- and maxProperties, array items / prefixItems /
minItems / maxItems / uniqueItems / contains, string minLength / maxLength / enum / format / simple patterns,
integer and number bounds (inclusive and exclusive) and multipleOf, boolean, null, const, enum, $ref into
$defs or definitions, allOf (merged), anyOf and oneOf (a non-null branch). Not covered: not, if/then/else,
dependent keywords, patternProperties; a schema that asks for them may get a document that violates them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

Generator = Callable[[random.Random, int], Any]

# Past this nesting depth, optional properties are left out and arrays take their minimum size,
# so that recursive schemas end; a schema that still recurses past HARD_DEPTH is refused.
SOFT_DEPTH = 6
HARD_DEPTH = 64
DEFAULT_MAX_STRING = 40
DEFAULT_ARRAY_SPAN = 3
SCHEMA_CACHE_SIZE = 512

WORDS = (
    "agent plan step result data model task review source summary draft analysis report context value "
    "signal market risk cost metric design test output input graph node edge check update research "
    "evidence claim answer option budget region user team service latency throughput quality score"
).split()


class SchemaUnsupported(ValueError):
    """No document can be generated for this schema (unsatisfiable, or beyond what the generator covers)."""


def schema_key(schema: Any) -> str:
    """The cache key of a schema: its JSON text as sent (callers send the same schema the same way)."""
    return json.dumps(schema, separators=(",", ":"))


@lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def _compiled(key: str) -> Generator:
    root = json.loads(key)
    return _Compiler(root).compile(root)


def schema_generator(schema: Any) -> Generator:
    """A function (rng, depth) -> document valid against `schema`; compiled once per distinct schema."""
    return _compiled(schema_key(schema))


def generate_document(schema: Any, rng: random.Random) -> Any:
    """One document that validates against `schema`, drawn with `rng`."""
    return schema_generator(schema)(rng, 0)


def words_text(rng: random.Random, length: int, vocabulary: tuple[str, ...] | list[str] = WORDS) -> str:
    """Words from `vocabulary`, at least `length` characters (callers cut to size)."""
    parts: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(vocabulary)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)


class _Compiler:
    """Turns one root schema into nested generator closures; $refs resolve lazily (schemas may recurse)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.refs: dict[str, Generator] = {}

    # ------------------------------------------------------------------ dispatch

    def compile(self, schema: Any) -> Generator:
        if schema is True or schema == {}:
            return _any_value
        if schema is False:
            raise SchemaUnsupported("the schema 'false' accepts nothing")
        if not isinstance(schema, dict):
            raise SchemaUnsupported(f"a schema must be an object or a boolean, not {type(schema).__name__}")
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "const" in schema:
            const = schema["const"]
            return lambda rng, depth: const
        if "enum" in schema:
            options = list(schema["enum"])
            if not options:
                raise SchemaUnsupported("an empty enum accepts nothing")
            return lambda rng, depth: rng.choice(options)
        if "allOf" in schema:
            return self.compile(self._merge_all_of(schema))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._any_of(schema, key)
        kind = self._type_of(schema)
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(schema)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return lambda rng, depth: rng.random() < 0.5
        if kind == "null":
            return lambda rng, depth: None
        raise SchemaUnsupported(f"unknown type {kind!r}")

    @staticmethod
    def _type_of(schema: dict[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            if not kind:
                raise SchemaUnsupported("an empty type list accepts nothing")
            return str(non_null[0] if non_null else "null")
        if kind is not None:
            return str(kind)
        if {"properties", "required", "additionalProperties", "minProperties"} & schema.keys():
            return "object"
        if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
            return "array"
        if {"minLength", "maxLength", "pattern", "format"} & schema.keys():
            return "string"
        if {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} & schema.keys():
            return "number"
        return "string"

    # ------------------------------------------------------------------ composition

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise SchemaUnsupported(f"only local $refs are supported, not {ref!r}")
        node = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaUnsupported(f"$ref {ref!r} points nowhere")
        return node

    def _ref(self, ref: str) -> Generator:
        target = self._resolve(ref)  # fail at compile time on a dangling ref
        compiled = self.refs

        def generate(rng: random.Random, depth: int) -> Any:
            if ref not in compiled:
                compiled[ref] = self.compile(target)
            return compiled[ref](rng, depth)

        return generate

    def _deref(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            schema = self._resolve(schema["$ref"])
            seen += 1
            if seen > HARD_DEPTH:
                raise SchemaUnsupported("circular $ref")
        return schema

    def _merge_all_of(self, schema: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self._deref(part)
            if part is True:
                continue
            if part is False:
                raise SchemaUnsupported("allOf holds the schema 'false'")
            if "allOf" in part:
                part = self._merge_all_of(part)
            for key, value in part.items():
                if key == "properties":  # a property both parts constrain must meet both
                    properties = dict(merged.get("properties", {}))
                    for name, sub in value.items():
                        properties[name] = {"allOf": [properties[name], sub]} if name in properties else sub
                    merged["properties"] = properties
                elif key == "required":
                    merged["required"] = sorted(set(merged.get("required", [])) | set(value))
                elif key in ("minimum", "minLength", "minItems", "minProperties", "exclusiveMinimum"):
                    merged[key] = max(merged[key], value) if key in merged else value
                elif key in ("maximum", "maxLength", "maxItems", "maxProperties", "exclusiveMaximum"):
                    merged[key] = min(merged[key], value) if key in merged else value
                else:
                    merged.setdefault(key, value)
        return merged

    def _any_of(self, schema: dict[str, Any], key: str) -> Generator:
        rest = {k: v for k, v in schema.items() if k != key}
        branches = []
        for branch in schema[key]:
            branch = self._deref(branch)
            if branch is False:
                continue
            is_null = isinstance(branch, dict) and branch.get("type") == "null"
            merged = self._merge_all_of({"allOf": [rest, branch]}) if isinstance(branch, dict) else rest or True
            branches.append((is_null, merged))
        if not branches:
            raise SchemaUnsupported(f"no {key} branch can be satisfied")
        preferred = [b for is_null, b in branches if not is_null] or [b for _, b in branches]
        if key == "oneOf":
            # Another branch may accept the same document; one fixed branch keeps that risk to one place.
            preferred = preferred[:1]
        generators = [self.compile(b) for b in preferred]
        if len(generators) == 1:
            return generators[0]
        return lambda rng, depth: rng.choice(generators)(rng, depth)

    # ------------------------------------------------------------------ objects and arrays

    def _object(self, schema: dict[str, Any]) -> Generator:
        properties: dict[str, Any] = schema.get("properties", {})
        required = list(schema.get("required", []))
        required_set = set(required)
        fields = {name: self.compile(sub) for name, sub in properties.items()}
        extra = schema.get("additionalProperties", True)
        extra_gen: Generator | None = None
        if extra is not False:
            extra_gen = _any_value if extra is True else self.compile(extra)
        for name in required:
            if name not in fields:
                if extra_gen is None:
                    raise SchemaUnsupported(
                        f"required property {name!r} is not allowed by additionalProperties"
                    )
                fields[name] = extra_gen
        optional = [n for n in fields if n not in required_set]
        min_props = int(schema.get("minProperties", 0))
        max_props = int(schema.get("maxProperties", len(fields) + min_props))
        if len(required_set) > max_props:
            raise SchemaUnsupported("more required properties than maxProperties")
        order = [n for n in fields if n in required_set]

        def generate(rng: random.Random, depth: int) -> Any:
            if depth > HARD_DEPTH:
                raise SchemaUnsupported("the schema recurses without end")
            names = list(order)
            if depth < SOFT_DEPTH:
                names += optional[: max(0, max_props - len(names))]
            else:
                names += optional[: max(0, min_props - len(names))]
            doc = {name: fields[name](rng, depth + 1) for name in names}
            index = 0
            while len(doc) < min_props:
                if extra_gen is None:
                    raise SchemaUnsupported("minProperties cannot be met without additionalProperties")
                key = f"extra_{index}"
                index += 1
                if key not in doc:
                    doc[key] = extra_gen(rng, depth + 1)
            return doc

        return generate

    def _array(self, schema: dict[str, Any]) -> Generator:
        items = schema.get("items", True)
        prefix_schemas = schema.get("prefixItems", [])
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix_schemas, items = items, schema.get("additionalItems", True)
        prefix = [self.compile(s) for s in prefix_schemas]
        item_gen: Generator | None = None if items is False else self.compile(items)
        contains_gen = self.compile(schema["contains"]) if "contains" in schema else None
        low = int(schema.get("minItems", 0))
        if contains_gen is not None:
            low = max(low, int(schema.get("minContains", 1)))
        high = int(schema.get("maxItems", max(low, len(prefix)) + DEFAULT_ARRAY_SPAN))
        if low > high:
            raise SchemaUnsupported(f"minItems {low} > maxItems {high}")
        if item_gen is None:
            high = min(high, len(prefix))
            if low > high:
                raise SchemaUnsupported("minItems needs more items than the tuple allows")
        unique = bool(schema.get("uniqueItems", False))

        def generate(rng: random.Random, depth: int) -> Any:
            if depth > HARD_DEPTH:
                raise SchemaUnsupported("the schema recurses without end")
            if depth < SOFT_DEPTH:
                # Any count in [low, high] is valid; a wide maxItems (4,000 steps) need not make huge samples.
                least = max(low, min(1, high), min(len(prefix), high))
                count = rng.randint(least, min(high, least + DEFAULT_ARRAY_SPAN))
            else:
                count = low
            result: list[Any] = []
            seen: set[str] = set()
            attempts = 0
            while len(result) < count:
                position = len(result)
                if position < len(prefix):
                    value = prefix[position](rng, depth + 1)
                elif contains_gen is not None and position == len(prefix):
                    value = contains_gen(rng, depth + 1)
                else:
                    assert item_gen is not None
                    value = item_gen(rng, depth + 1)
                if unique:
                    marker = json.dumps(value, sort_keys=True)
                    if marker in seen:
                        attempts += 1
                        if attempts > 20 * (count + 1):
                            raise SchemaUnsupported("cannot draw enough distinct items for uniqueItems")
                        continue
                    seen.add(marker)
                result.append(value)
            return result

        return generate

    # ------------------------------------------------------------------ scalars

    def _string(self, schema: dict[str, Any]) -> Generator:
        low = int(schema.get("minLength", 0))
        high = int(schema.get("maxLength", max(low, DEFAULT_MAX_STRING)))
        if low > high:
            raise SchemaUnsupported(f"minLength {low} > maxLength {high}")
        fmt = schema.get("format")
        if fmt in _FORMATS and "pattern" not in schema:
            make = _FORMATS[fmt]
            # Formatted values vary in length (an email's word): draw until one fits the length bounds,
            # falling back to a fitting sample found here; no fitting sample at all means plain text.
            fitting = next(
                (v for seed in range(64) if low <= len(v := make(random.Random(seed))) <= high), None
            )
            if fitting is not None:

                def formatted(rng: random.Random, depth: int) -> str:
                    for _ in range(16):
                        if low <= len(value := make(rng)) <= high:
                            return value
                    return fitting

                return formatted
        pattern_text = schema.get("pattern")
        pattern = None
        if pattern_text is not None:
            try:
                pattern = re.compile(pattern_text)
            except re.error as exc:
                raise SchemaUnsupported(
                    f"pattern {pattern_text!r} is not a regular expression here: {exc}"
                ) from exc

        def text(rng: random.Random) -> str:
            target = rng.randint(max(low, min(high, 3)), high) if high > 0 else 0
            value = words_text(rng, target)[:target].rstrip()
            return value + "x" * (low - len(value)) if len(value) < low else value

        if pattern is None:
            return lambda rng, depth: text(rng)

        def matching(rng: random.Random, depth: int) -> str:
            drawn = text(rng)
            digest = hashlib.sha256(drawn.encode()).hexdigest()  # content addresses: hex digests
            longest = int(schema.get("maxLength", len(digest)))  # the text cap is ours; a pattern may need more
            for candidate in (drawn.replace(" ", "_"), drawn, *_PATTERN_CANDIDATES, digest, digest[:40]):
                if low <= len(candidate) <= longest and pattern.search(candidate):
                    return candidate
            raise SchemaUnsupported(f"cannot generate a string matching {pattern_text!r}")

        matching(random.Random(0), 0)  # fail at compile time when no candidate fits
        return matching

    @staticmethod
    def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
        low, high = schema.get("minimum"), schema.get("maximum")
        low_open = high_open = False
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if ex_low is True:  # draft 4: a flag on minimum
            low_open = True
        elif (
            isinstance(ex_low, int | float)
            and not isinstance(ex_low, bool)
            and (low is None or ex_low >= low)
        ):
            low, low_open = ex_low, True
        if ex_high is True:
            high_open = True
        elif (
            isinstance(ex_high, int | float)
            and not isinstance(ex_high, bool)
            and (high is None or ex_high <= high)
        ):
            high, high_open = ex_high, True
        return low, low_open, high, high_open

    def _integer(self, schema: dict[str, Any]) -> Generator:
        low, low_open, high, high_open = self._bounds(schema)
        lo = (
            math.floor(low) + 1
            if low is not None and low_open and low == math.floor(low)
            else (math.ceil(low) if low is not None else None)
        )
        hi = (
            math.ceil(high) - 1
            if high is not None and high_open and high == math.ceil(high)
            else (math.floor(high) if high is not None else None)
        )
        lo, hi = _default_range(lo, hi, span=100)
        step = schema.get("multipleOf")
        if step is not None:
            if step != int(step):
                raise SchemaUnsupported("a fractional multipleOf on an integer is not supported")
            step = int(step)
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if first > last:
                raise SchemaUnsupported(f"no multiple of {step} in [{lo}, {hi}]")
            return lambda rng, depth: rng.randint(first, last) * step
        if lo > hi:
            raise SchemaUnsupported(f"no integer in [{lo}, {hi}]")
        return lambda rng, depth: rng.randint(lo, hi)

    def _number(self, schema: dict[str, Any]) -> Generator:
        low, low_open, high, high_open = self._bounds(schema)
        step = schema.get("multipleOf")
        if step is not None:
            if step == int(step):  # integral steps: an integer is a valid number
                return self._integer(schema)
            lo_f, hi_f = _default_range(low, high, span=100.0)
            first, last = math.ceil(lo_f / step), math.floor(hi_f / step)
            candidates = [
                k
                for k in range(first, min(last, first + 1000) + 1)
                if _inside(k * step, low, low_open, high, high_open) and (k * step / step).is_integer()
            ]
            if not candidates:
                raise SchemaUnsupported(f"no multiple of {step} in the range")
            return lambda rng, depth: rng.choice(candidates) * step
        lo_f, hi_f = _default_range(low, high, span=100.0)
        if lo_f > hi_f or (lo_f == hi_f and (low_open or high_open)):
            raise SchemaUnsupported(f"no number in ({lo_f}, {hi_f})")
        middle = (lo_f + hi_f) / 2

        def generate(rng: random.Random, depth: int) -> float:
            value = round(rng.uniform(lo_f, hi_f), 2)
            return value if _inside(value, low, low_open, high, high_open) else middle

        return generate


def _default_range(low: Any, high: Any, span: Any) -> tuple[Any, Any]:
    """Fill in missing bounds with small, plausible values."""
    if low is None and high is None:
        return 0 * span, span
    if low is None:
        return (0 * span if high >= span else high - span), high
    if high is None:
        return low, low + span
    return low, high


def _inside(value: float, low: float | None, low_open: bool, high: float | None, high_open: bool) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return not (high is not None and (value > high or (high_open and value == high)))


def _any_value(rng: random.Random, depth: int) -> Any:
    return rng.choice(WORDS)


def _date_time(rng: random.Random) -> str:
    moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 365 * 86400))
    return moment.isoformat().replace("+00:00", "Z")


_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": _date_time,
    "date": lambda rng: _date_time(rng)[:10],
    "time": lambda rng: _date_time(rng)[11:],
    "email": lambda rng: f"{rng.choice(WORDS)}@example.com",
    "uri": lambda rng: f"https://example.com/{rng.choice(WORDS)}",
    "url": lambda rng: f"https://example.com/{rng.choice(WORDS)}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "ipv4": lambda rng: ".".join(str(rng.randint(1, 254)) for _ in range(4)),
}

# Tried in order when a pattern rejects drawn text: these satisfy most identifier- and code-like patterns.
_PATTERN_CANDIDATES = (
    "a", "ab", "abc", "agent", "a1", "a_1", "a-1", "A", "AB", "A1", "x", "0", "1", "10", "123",
    "step_1", "step-1", "Step1", "a.b", "a b", "",
)  # fmt: skip
