"""Tool calling through structured output: the model answers {"action": "tool"|"final", ...} until it is done."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema.protocols import Validator

from services.worker_pool.errors import StepFailed
from services.worker_pool.tools.base import Tool, ToolContext, ToolError
from services.worker_pool.validation import ModelFn, problem, repair_messages, validator_for
from swarm.contracts import ChatMessage

log = logging.getLogger(__name__)

PROTOCOL = """You can call tools. Reply with JSON only, one object with these fields:
- "action": "tool" to call a tool, or "final" when you have the answer;
- "tool": the tool's name (used when action is "tool");
- "arguments": the tool's arguments, an object matching its parameters (use {{}} with "final");
- "answer": your final answer when action is "final"; otherwise a few words on why you call the tool.
After each tool call you get its result and decide again. You may call at most {rounds} tools.
Tools:
{tools}"""
RESULT_PREFIX = "Result of "  # how a tool result starts in the conversation (the turn's memory parses it)
LAST_ROUND = "You may not call more tools. Reply with action \"final\" and your answer."


@dataclass(frozen=True)
class ToolCall:
    """One finished tool call, as reported to the step's event log."""

    index: int
    tool: str
    ok: bool
    duration_ms: float
    error: str = ""


OnToolCall = Callable[[ToolCall], Awaitable[None]]


def decision_schema(tool_names: tuple[str, ...], answer_max_chars: int) -> dict[str, Any]:
    """The JSON schema of one decision; with no tools left, only "final" is possible."""
    properties: dict[str, Any] = {
        "action": {"type": "string", "enum": ["tool", "final"] if tool_names else ["final"]},
    }
    if tool_names:
        properties["tool"] = {"type": "string", "enum": list(tool_names)}
        properties["arguments"] = {"type": "object"}
    properties["answer"] = {"type": "string", "minLength": 1, "maxLength": answer_max_chars}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def tools_prompt(tools: Mapping[str, Tool], max_rounds: int) -> str:
    """The protocol and each tool's description and parameters, for the system message."""
    listing = "\n".join(
        f"- {name}: {tool.description} Parameters (JSON Schema): {json.dumps(tool.parameters, separators=(',', ':'))}"
        for name, tool in tools.items()
    )
    return PROTOCOL.format(rounds=max_rounds, tools=listing)


def _check_decision(content: str, validator: Validator) -> tuple[Any, str | None]:
    """The decision and what is wrong with it; a final answer is taken whatever the unused fields hold."""
    decision, error = problem(content, validator)
    if error is not None and isinstance(decision, dict):
        if decision.get("action") == "final" and isinstance(decision.get("answer"), str):
            return decision, None
    return decision, error


@dataclass
class ToolLoop:
    """Runs one step's conversation: decisions, tool calls, their results, and the final answer."""

    model: ModelFn
    tools: Mapping[str, Tool]
    ctx: ToolContext
    max_rounds: int = 4
    tool_timeout_s: float = 30.0
    result_chars: int = 4000
    answer_max_chars: int = 8000
    on_tool_call: OnToolCall | None = None

    async def run(self, messages: tuple[ChatMessage, ...]) -> tuple[str, tuple[ChatMessage, ...]]:
        """The final answer and the whole conversation that led to it."""
        system, *rest = messages
        protocol = tools_prompt(self.tools, self.max_rounds)
        conversation = (ChatMessage(role="system", content=f"{system.content}\n\n{protocol}"), *rest)
        names = tuple(self.tools)
        for round_ in range(self.max_rounds + 1):
            allowed = names if round_ < self.max_rounds else ()
            if not allowed and round_:
                conversation = (*conversation, ChatMessage(role="user", content=LAST_ROUND))
            raw, decision = await self._decide(conversation, allowed)
            if decision["action"] == "final":
                answer = str(decision.get("answer", "")).strip()
                if not answer:
                    raise StepFailed("the model's final answer is empty", retryable=True)
                return answer, conversation
            name, args = decision["tool"], decision.get("arguments") or {}
            result = await self._call(round_ + 1, self.tools[name], args)
            conversation = (
                *conversation,
                ChatMessage(role="assistant", content=raw[:4000]),
                ChatMessage(role="user", content=f"{RESULT_PREFIX}{name} (call {round_ + 1}):\n{result}"),
            )
        raise AssertionError("unreachable: the last round only allows 'final'")

    async def _decide(
        self, conversation: tuple[ChatMessage, ...], allowed: tuple[str, ...]
    ) -> tuple[str, dict[str, Any]]:
        """One decision, with one repair call when the reply is not JSON of the right shape."""
        schema = decision_schema(allowed, self.answer_max_chars)
        validator = validator_for(schema)
        content = (await self.model(conversation, schema)).content
        decision, error = _check_decision(content, validator)
        if error is None:
            return content, decision
        repaired = (await self.model(repair_messages(conversation, content, error), schema)).content
        decision, error = _check_decision(repaired, validator)
        if error is not None:
            raise StepFailed(f"the model's reply is not a valid tool decision after a repair attempt: {error}", True)
        return repaired, decision

    async def _call(self, index: int, tool: Tool, args: Any) -> str:
        """Run one tool call and report it; failures become a result the model reads, never a step failure."""
        started = time.perf_counter()
        error = ""
        try:
            _, invalid = problem(json.dumps(args), validator_for(tool.parameters))
            if invalid is not None:
                raise ToolError(f"invalid arguments: {invalid}")
            timeout_s = tool.timeout_s or self.tool_timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    output = await tool.call(args, self.ctx)
            except TimeoutError:
                raise ToolError(f"timed out after {timeout_s:g}s") from None
            text = output if isinstance(output, str) else json.dumps(output)
        except ToolError as exc:
            error = str(exc) or type(exc).__name__
        except StepFailed:
            raise
        except Exception as exc:  # a plug-in's bug: the model hears of it, the log keeps the trace
            log.exception("tool %s failed", tool.name)
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = (time.perf_counter() - started) * 1000
        if self.on_tool_call is not None:
            await self.on_tool_call(ToolCall(index, tool.name, not error, duration_ms, error[:1000]))
        result = f"ERROR: {error}" if error else text
        if len(result) > self.result_chars:
            result = result[: self.result_chars] + "\n[result truncated]"
        return result
