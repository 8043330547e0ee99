"""The sim backend's JSON Schema generator: every document it draws validates (checked by a real validator)."""

from __future__ import annotations

import random
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.schemagen import SchemaUnsupported, generate_document, schema_generator
from swarm.contracts import InferenceRequest, Plan, StepResult, TaskSubmission


def assert_valid(schema: Any, document: Any) -> None:
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class(schema).validate(document)


# ---------------------------------------------------------------------------- random schemas


def _bounded_pair(low: int, high: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(low, high), st.integers(low, high)).map(sorted).map(tuple)


@st.composite
def string_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if draw(st.booleans()):
        low, high = draw(_bounded_pair(0, 60))
        schema.update(minLength=low, maxLength=high)
    elif draw(st.booleans()):
        schema["minLength"] = draw(st.integers(0, 30))
    if draw(st.integers(0, 4)) == 0:
        return {"enum": draw(st.lists(st.text(max_size=8), min_size=1, max_size=4, unique=True))}
    if draw(st.integers(0, 5)) == 0:
        schema["format"] = draw(st.sampled_from(["date-time", "date", "email", "uuid", "uri"]))
    if draw(st.integers(0, 5)) == 0:
        schema["pattern"] = draw(st.sampled_from(["^[a-z_]+$", "^[A-Za-z0-9_-]{1,64}$", "[0-9]", "^step"]))
        schema.pop("maxLength", None)
        schema.pop("minLength", None)
    return schema


@st.composite
def numeric_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["integer", "number"]))
    schema: dict[str, Any] = {"type": kind}
    low, high = draw(_bounded_pair(-1000, 1000))
    if draw(st.booleans()):
        schema["minimum"] = low
    if draw(st.booleans()):
        schema["maximum"] = high + 2  # leaves room for exclusive bounds
    if draw(st.booleans()):
        schema["exclusiveMinimum"] = low - 1
    if draw(st.booleans()) and low < 990:
        schema["multipleOf"] = draw(st.sampled_from([1, 2, 5, 0.5, 0.25] if kind == "number" else [1, 2, 5]))
        schema["maximum"] = max(schema.get("maximum", high + 2), low + 20)
    return schema


scalar_schemas = st.one_of(
    string_schemas(),
    numeric_schemas(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda v: {"const": v}, st.one_of(st.integers(), st.text(max_size=5), st.booleans())),
    st.just({}),
    st.just({"type": ["string", "null"], "maxLength": 5}),
)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        properties = draw(st.dictionaries(names, children, max_size=5))
        required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
        schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        if draw(st.booleans()):
            schema["additionalProperties"] = False
        return schema

    @st.composite
    def arrays(draw: st.DrawFn) -> dict[str, Any]:
        low, high = draw(_bounded_pair(0, 6))
        return {"type": "array", "items": draw(children), "minItems": low, "maxItems": high}

    @st.composite
    def unions(draw: st.DrawFn) -> dict[str, Any]:
        return {"anyOf": [draw(children), {"type": "null"}]}

    return st.one_of(objects(), arrays(), unions())


schemas = st.recursive(scalar_schemas, _extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(schema=schemas, seed=st.integers(0, 2**32))
def test_random_schemas_get_valid_documents(schema: dict[str, Any], seed: int) -> None:
    assert_valid(schema, generate_document(schema, random.Random(seed)))


# ---------------------------------------------------------------------------- what callers send


@pytest.mark.parametrize("model", [Plan, TaskSubmission, StepResult, InferenceRequest])
def test_pydantic_schemas_with_refs_and_patterns(model: Any) -> None:
    schema = model.model_json_schema()
    for seed in range(30):
        document = generate_document(schema, random.Random(seed))
        assert_valid(schema, document)


def test_plan_documents_parse_as_plans() -> None:
    schema = Plan.model_json_schema()
    for seed in range(20):
        Plan.model_validate(generate_document(schema, random.Random(seed)))


def test_recursive_schema_terminates() -> None:
    schema = {
        "$defs": {"node": {"type": "object", "properties": {"name": {"type": "string"},
                  "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["name"]}},
        "$ref": "#/$defs/node",
    }  # fmt: skip
    for seed in range(20):
        assert_valid(schema, generate_document(schema, random.Random(seed)))


def test_all_of_is_merged() -> None:
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        {"properties": {"b": {"type": "string", "maxLength": 3}}, "required": ["b"]}]}  # fmt: skip
    document = generate_document(schema, random.Random(1))
    assert_valid(schema, document)
    assert set(document) >= {"a", "b"}


def test_unique_items_and_bounds() -> None:
    schema = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
              "minItems": 5, "maxItems": 8, "uniqueItems": True}  # fmt: skip
    for seed in range(20):
        document = generate_document(schema, random.Random(seed))
        assert_valid(schema, document)
        assert 5 <= len(document) <= 8


# ---------------------------------------------------------------------------- determinism, caching, refusals


def test_same_seed_same_document_and_one_compilation_per_schema() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "number"}}}
    assert generate_document(schema, random.Random(7)) == generate_document(schema, random.Random(7))
    assert schema_generator(schema) is schema_generator(dict(schema))


@pytest.mark.parametrize(
    "schema",
    [
        False,
        {"type": "string", "minLength": 5, "maxLength": 2},
        {"type": "integer", "minimum": 3, "maximum": 2},
        {"enum": []},
        {"$ref": "#/$defs/missing"},
        {"type": "array", "items": {"type": "boolean"}, "minItems": 3, "uniqueItems": True},
        {"type": "object", "required": ["a"], "additionalProperties": False},
    ],
)
def test_unsatisfiable_schemas_are_refused(schema: Any) -> None:
    with pytest.raises(SchemaUnsupported):
        generate_document(schema, random.Random(0))


def test_formatted_strings_meet_length_bounds_whatever_word_is_drawn() -> None:
    """Hypothesis found it: an email of a short word fell under minLength 17."""
    schema = {"type": "array", "items": {"type": "string", "minLength": 17, "format": "email"}}
    for seed in range(200):
        jsonschema.validate(generate_document(schema, random.Random(seed)), schema)
