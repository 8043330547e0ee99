"""Tool registry, the tool-calling loop and output validation, driven by scripted model functions (no server)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.worker_pool.errors import StepFailed
from services.worker_pool.settings import WorkerSettings
from services.worker_pool.toolloop import ToolCall, ToolLoop, decision_schema
from services.worker_pool.tools import Tool, ToolContext, ToolError, ToolRegistry, UnknownTool
from services.worker_pool.tools.builtin import SpawnTool
from services.worker_pool.validation import ModelReply, structured_output
from swarm.contracts import ChatMessage, SpawnRequest

SETTINGS = WorkerSettings(sandbox_cpu_s=2, sandbox_wall_s=5.0)
MESSAGES = (ChatMessage(role="system", content="You are a tester."), ChatMessage(role="user", content="Task: add."))


class Script:
    """A model as a pure function of the call count: returns the scripted replies in order, records its inputs."""

    def __init__(self, *replies: str | dict[str, Any]) -> None:
        self.replies = [r if isinstance(r, str) else json.dumps(r) for r in replies]
        self.calls: list[tuple[tuple[ChatMessage, ...], dict[str, Any] | None]] = []

    async def __call__(self, messages: tuple[ChatMessage, ...], schema: dict[str, Any] | None) -> ModelReply:
        self.calls.append((messages, schema))
        return ModelReply(self.replies[len(self.calls) - 1], prompt_tokens=10, completion_tokens=5)


def tool(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"action": "tool", "tool": name, "arguments": args, "answer": "checking"}


def final(answer: str) -> dict[str, Any]:
    return {"action": "final", "tool": "python", "arguments": {}, "answer": answer}


def context() -> ToolContext:
    return ToolContext(run_id="r1", tenant="t", step_id="s1", agent_id="a1", attempt=1, settings=SETTINGS)


class Upper(Tool):
    name = "upper"
    description = "Upper-cases text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> str:
        if args["text"] == "fail":
            raise ToolError("asked to fail")
        return args["text"].upper()


def loop_with(model: Script, *tools: Tool, max_rounds: int = 3) -> tuple[ToolLoop, list[ToolCall]]:
    calls: list[ToolCall] = []

    async def record(call: ToolCall) -> None:
        calls.append(call)

    loop = ToolLoop(model, {t.name: t for t in tools}, context(), max_rounds=max_rounds, on_tool_call=record)
    return loop, calls


# --------------------------------------------------------------------------- registry


def test_registry_offers_the_builtins_and_explains_a_disabled_or_unknown_tool() -> None:
    registry = ToolRegistry.for_worker(SETTINGS)
    assert {"python", "scratchpad", "spawn"} <= set(registry.names())
    with pytest.raises(UnknownTool, match=r"http_fetch.*disabled"):
        registry.get("http_fetch")
    with pytest.raises(UnknownTool, match=r"'nope'.*not registered") as excinfo:
        registry.resolve(["python", "nope", "nada"])
    assert "nada" in str(excinfo.value)


def test_http_fetch_is_offered_when_enabled() -> None:
    registry = ToolRegistry.for_worker(WorkerSettings(http_fetch_enabled=True, http_allowed_hosts=("example.org",)))
    assert "http_fetch" in registry.names()


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real installed distribution (a .dist-info on sys.path) declaring swarm.tools entry points."""
    (tmp_path / "swarm_test_plugin.py").write_text(
        "from services.worker_pool.tools import Tool\n"
        "class Reverse(Tool):\n"
        "    name = 'reverse'\n"
        "    description = 'Reverses text.'\n"
        "    parameters = {'type': 'object', 'properties': {'text': {'type': 'string'}}}\n"
        "    async def call(self, args, ctx):\n"
        "        return args['text'][::-1]\n"
    )
    info = tmp_path / "swarm_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: swarm-test-plugin\nVersion: 1.0\n")
    group = "swarm.tools.test"
    (info / "entry_points.txt").write_text(
        f"[{group}]\nreverse = swarm_test_plugin:Reverse\nbroken = swarm_test_plugin_missing:Tool\n"
        "python = swarm_test_plugin:Reverse\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "swarm_test_plugin", raising=False)
    return group


async def test_user_tools_come_from_entry_points(plugin_dist: str) -> None:
    registry = ToolRegistry.for_worker(SETTINGS, group=plugin_dist)
    reverse = registry.get("reverse")
    assert await reverse.call({"text": "abc"}, context()) == "cba"
    assert registry.get("python").name == "python"  # a plug-in cannot take a built-in's name
    with pytest.raises(UnknownTool, match=r"broken.*failed to load.*ModuleNotFoundError"):
        registry.get("broken")


# --------------------------------------------------------------------------- the tool loop


def test_the_decision_schema_bounds_every_string_and_lists_only_allowed_tools() -> None:
    schema = decision_schema(("python", "spawn"), 500)
    jsonschema.validators.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["tool"]["enum"] == ["python", "spawn"]
    assert schema["properties"]["answer"]["maxLength"] == 500
    last = decision_schema((), 500)
    assert last["properties"]["action"]["enum"] == ["final"] and "tool" not in last["properties"]


async def test_a_tool_call_then_a_final_answer() -> None:
    model = Script(tool("upper", {"text": "hi"}), final("the answer is HI"))
    loop, calls = loop_with(model, Upper())
    answer, conversation = await loop.run(MESSAGES)
    assert answer == "the answer is HI"
    assert [(c.index, c.tool, c.ok) for c in calls] == [(1, "upper", True)]
    assert "upper" in model.calls[0][0][0].content  # the system message lists the tools
    assert conversation[-1].content.endswith("HI")  # the tool's result was fed back


async def test_tool_failures_are_results_the_model_reads() -> None:
    model = Script(tool("upper", {"text": "fail"}), tool("upper", {"wrong": 1}), final("gave up"))
    loop, calls = loop_with(model, Upper())
    answer, conversation = await loop.run(MESSAGES)
    assert answer == "gave up"
    assert [c.ok for c in calls] == [False, False]
    assert "asked to fail" in calls[0].error and "invalid arguments" in calls[1].error
    assert conversation[-1].content.startswith("Result of upper (call 2):\nERROR: invalid arguments")


async def test_the_last_round_allows_only_a_final_answer() -> None:
    model = Script(tool("upper", {"text": "a"}), tool("upper", {"text": "b"}), final("done"))
    loop, calls = loop_with(model, Upper(), max_rounds=2)
    assert (await loop.run(MESSAGES))[0] == "done"
    assert len(calls) == 2
    last_schema = model.calls[-1][1]
    assert last_schema is not None and last_schema["properties"]["action"]["enum"] == ["final"]


async def test_garbage_gets_one_repair_with_the_error() -> None:
    model = Script("this is not json", final("repaired"))
    loop, _ = loop_with(model, Upper())
    assert (await loop.run(MESSAGES))[0] == "repaired"
    repair_prompt = model.calls[1][0][-1].content
    assert "invalid" in repair_prompt and "not JSON" in repair_prompt


async def test_garbage_twice_fails_the_step_retryably() -> None:
    model = Script({"action": "tool", "tool": "rm -rf", "arguments": {}, "answer": "x"}, "{}")
    loop, _ = loop_with(model, Upper())
    with pytest.raises(StepFailed, match="not a valid tool decision") as excinfo:
        await loop.run(MESSAGES)
    assert excinfo.value.retryable


async def test_the_python_tool_runs_in_the_sandbox() -> None:
    registry = ToolRegistry.for_worker(SETTINGS)
    model = Script(tool("python", {"code": "print(6 * 7)"}), tool("python", {"code": "1/0"}), final("42"))
    loop, calls = loop_with(model, registry.get("python"))
    answer, conversation = await loop.run(MESSAGES)
    assert answer == "42"
    assert [c.ok for c in calls] == [True, False]
    assert '"stdout": "42\\n"' in conversation[-3].content
    assert "ZeroDivisionError" in calls[1].error


async def test_spawn_collects_a_request_for_the_step_result() -> None:
    spawn_args = {
        "agents": [{"id": "helper", "role": "helper"}],
        "steps": [{"id": "child1", "agent_id": "helper", "instruction": "dig"},
                  {"id": "child2", "agent_id": "helper", "instruction": "sum", "depends_on": ["child1"]}],
    }  # fmt: skip
    model = Script(tool("spawn", spawn_args), tool("spawn", {"steps": [{"id": "child1", "agent_id": "a1", "instruction": "x"}]}), final("ok"))
    loop, calls = loop_with(model, SpawnTool())
    await loop.run(MESSAGES)
    assert [c.ok for c in calls] == [True, False]  # the second reuses an id
    spawned = loop.ctx.spawned()
    assert isinstance(spawned, SpawnRequest)
    assert [s.id for s in spawned.steps] == ["child1", "child2"] and spawned.agents[0].id == "helper"


@pytest.mark.parametrize(
    "args",
    [
        {"steps": [{"id": "s1", "agent_id": "a1", "instruction": "me again"}]},
        {"steps": [{"id": "x", "agent_id": "a1", "instruction": "loop", "depends_on": ["x"]}]},
        {"steps": [{"id": "bad id!", "agent_id": "a1", "instruction": "x"}]},
        {"steps": []},
    ],
    ids=["own-id", "self-dependency", "bad-id", "empty"],
)
async def test_spawn_refuses_invalid_requests(args: dict[str, Any]) -> None:
    ctx = context()
    with pytest.raises(ToolError):
        await SpawnTool().call(args, ctx)
    assert ctx.spawned() is None


# --------------------------------------------------------------------------- output validation

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0}, "label": {"type": "string", "maxLength": 10}},
    "required": ["score", "label"],
}


async def test_valid_output_passes_in_one_call() -> None:
    model = Script({"score": 3, "label": "ok"})
    assert json.loads(await structured_output(model, MESSAGES, SCHEMA)) == {"score": 3, "label": "ok"}
    assert len(model.calls) == 1 and model.calls[0][1] == SCHEMA


async def test_invalid_output_gets_one_repair_with_the_validation_error() -> None:
    model = Script({"score": -1, "label": "ok"}, {"score": 1, "label": "ok"})
    assert json.loads(await structured_output(model, MESSAGES, SCHEMA)) == {"score": 1, "label": "ok"}
    assert "minimum" in model.calls[1][0][-1].content and "score" in model.calls[1][0][-1].content


async def test_invalid_output_twice_fails_retryably() -> None:
    model = Script({"score": "high"}, "nope")
    with pytest.raises(StepFailed, match="output_schema after a repair") as excinfo:
        await structured_output(model, MESSAGES, SCHEMA)
    assert excinfo.value.retryable and len(model.calls) == 2


async def test_an_invalid_schema_fails_for_good_without_calling_the_model() -> None:
    model = Script()
    with pytest.raises(StepFailed, match="not a valid JSON Schema") as excinfo:
        await structured_output(model, MESSAGES, {"type": "no-such-type"})
    assert not excinfo.value.retryable and model.calls == []
