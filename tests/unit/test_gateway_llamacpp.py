"""Pieces of the llamacpp backend that need no model: the grammar fix, the lenient parse, the ChatML count."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from services.gateway.backends.llamacpp import chatml, json_grammar, parse_json_output
from services.gateway.engine import EngineError


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
