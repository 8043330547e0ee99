"""Structured output: a schema-valid reply whose text loops fails validation like a schema error (one repair)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.worker_pool.errors import StepFailed
from services.worker_pool.validation import ModelReply, degenerate_string, structured_output
from swarm.contracts import ChatMessage
from swarm.inference import chat

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "points": {"type": "array", "items": {"type": "string"}}},
    "required": ["title", "points"],
}
LOOP = "the wind blows over the sea " * 6
GOOD = {"title": "Wind", "points": ["Germany builds wind farms at sea and on land.", "Norway has hydro."]}


class Script:
    """A model that answers from a list, recording each conversation."""

    def __init__(self, *replies: Any) -> None:
        self.replies = [r if isinstance(r, str) else json.dumps(r) for r in replies]
        self.calls: list[tuple[ChatMessage, ...]] = []

    async def __call__(self, messages: tuple[ChatMessage, ...], schema: dict[str, Any] | None) -> ModelReply:
        self.calls.append(messages)
        return ModelReply(self.replies[len(self.calls) - 1])


def test_only_long_strings_are_judged_and_the_path_is_named() -> None:
    assert degenerate_string({"tags": ["wind"] * 50, "n": 3}) is None  # short strings: the data itself
    reason = degenerate_string({"title": "ok", "points": ["fine", LOOP]})
    assert reason is not None and reason.startswith("the string at points/1 is a loop")
    assert degenerate_string(GOOD) is None


async def test_a_looping_string_gets_the_repair_call_with_the_reason() -> None:
    model = Script({"title": "Wind", "points": [LOOP]}, GOOD)
    assert json.loads(await structured_output(model, chat("s", "u"), SCHEMA)) == GOOD
    assert "points/0 is a loop" in model.calls[1][-1].content


async def test_a_second_looping_reply_fails_the_attempt_retryably() -> None:
    model = Script({"title": "Wind", "points": [LOOP]}, {"title": LOOP, "points": []})
    with pytest.raises(StepFailed, match="title is a loop") as failed:
        await structured_output(model, chat("s", "u"), SCHEMA)
    assert failed.value.retryable
