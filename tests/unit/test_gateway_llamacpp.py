"""Pieces of the llamacpp backend that need no model: the grammar fix, the lenient parse, the ChatML count,
the sampling arguments."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from services.gateway.backends.llamacpp import chatml, json_grammar, parse_json_output, sampling
from services.gateway.engine import EngineError
from services.gateway.settings import GatewaySettings
from swarm.contracts import ChatMessage, InferenceRequest


def test_grammar_keeps_control_characters_out_of_strings() -> None:
    grammar = json_grammar({"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}}})
    char_rules = [line for line in grammar._grammar.splitlines() if line.startswith("char ::=")]
    assert char_rules == [
        'char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
    ]


def test_lenient_parse_reserializes_raw_control_characters() -> None:
    content = parse_json_output('{"a": "line\nbreak\ttab"}', "stop", 32)
    assert json.loads(content) == {"a": "line\nbreak\ttab"}  # strict parse now succeeds


def test_truncated_output_is_an_error_that_names_max_tokens() -> None:
    with pytest.raises(EngineError, match="max_tokens=32"):
        parse_json_output('{"a": "unfinis', "length", 32)


def test_chatml_ends_with_the_assistant_turn() -> None:
    text = chatml([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _request(**fields: object) -> InferenceRequest:
    return InferenceRequest(request_id="r", messages=(ChatMessage(role="user", content="hi"),), **fields)  # type: ignore[arg-type]


def test_free_text_gets_the_settings_repetition_controls() -> None:
    settings = GatewaySettings(backend="llamacpp", repeat_penalty=1.2, frequency_penalty=0.3, presence_penalty=0.1)
    assert sampling(_request(temperature=0.4), settings) == {
        "temperature": 0.4, "repeat_penalty": 1.2, "frequency_penalty": 0.3, "presence_penalty": 0.1,
    }  # fmt: skip


def test_the_requests_own_controls_and_seed_win() -> None:
    settings = GatewaySettings(backend="llamacpp", repeat_penalty=1.2, frequency_penalty=0.3)
    request = _request(repetition_penalty=1.05, frequency_penalty=0.0, presence_penalty=0.5, seed=7)
    assert sampling(request, settings) == {
        "temperature": 0.2, "repeat_penalty": 1.05, "frequency_penalty": 0.0, "presence_penalty": 0.5, "seed": 7,
    }  # fmt: skip


def test_json_output_is_not_penalized_unless_asked() -> None:
    settings = GatewaySettings(backend="llamacpp", repeat_penalty=1.3, frequency_penalty=0.3, presence_penalty=0.2)
    schema = {"type": "object"}
    assert sampling(_request(json_schema=schema), settings) == {
        "temperature": 0.2, "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
    }  # fmt: skip
    assert sampling(_request(json_schema=schema, repetition_penalty=1.1), settings)["repeat_penalty"] == 1.1
