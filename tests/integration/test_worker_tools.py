"""The real worker and the sim gateway in-process on a real nats-server: tools, output schemas, large payloads.

Steps are published straight to the worker pool's queue and results read from RESULTS, so these tests
exercise the worker alone (no dispatcher).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from services.gateway.backends import create_engine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from services.worker_pool.__main__ import main as worker_main
from services.worker_pool.settings import WorkerSettings
from services.worker_pool.tools import ToolContext, ToolError, ToolRegistry
from services.worker_pool.tools.sandbox import unavailable_reason
from swarm.bus import Bus
from swarm.client import read_step_events
from swarm.contracts import (
    OUTPUTS_BUCKET,
    RESULTS,
    STEPS,
    WORKERS_CONSUMER_PREFIX,
    AgentSpec,
    InferenceRequest,
    Keys,
    StepDispatch,
    StepEvent,
    StepEventKind,
    StepResult,
    StepSpec,
    StepStatus,
    Subjects,
    results_of,
)
from swarm.payloads import Payloads, is_ref
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

AGENT = AgentSpec(id="a1", role="analyst")


@asynccontextmanager
async def worker_and_gateway(
    bus: Bus, settings: WorkerSettings, **gateway: Any
) -> AsyncIterator[None]:
    gateway_settings = GatewaySettings(backend="sim", **{"sim_latency_scale": 0.0, **gateway})
    engine = create_engine(gateway_settings)
    server = GatewayServer(bus, engine, gateway_settings)
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker_main(stop, settings))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await server.stop()
        await engine.close()


async def run_steps(
    bus: Bus, run_id: str, *steps: StepSpec, timeout_s: float = 60, inputs: dict[str, str] | None = None
) -> dict[str, StepResult]:
    """Queue the steps (with `inputs` inline), wait for one result of each."""
    psub = await bus.js.pull_subscribe(Subjects.result("t", run_id), durable=f"test-{run_id}", stream=RESULTS.name)
    for step in steps:
        dispatch = StepDispatch(
            run_id=run_id, tenant="t", goal="check the numbers", agent=AGENT, step=step, attempt=1, inputs=inputs or {}
        )
        await bus.publish(Subjects.steps("default"), dispatch)
    results: dict[str, StepResult] = {}
    async with asyncio.timeout(timeout_s):
        while len(results) < len(steps):
            try:
                msgs = await psub.fetch(10, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                results.update((result.step_id, result) for result in results_of(msg.data))
                await msg.ack()
    return results


async def step_events(bus: Bus, run_id: str, results: dict[str, StepResult]) -> list[StepEvent]:
    """What the worker published itself (a long step's heartbeat) and what rode with its results."""
    return [*await read_step_events(bus.js, run_id, idle_s=0.3), *(e for r in results.values() for e in r.events)]


async def output_of(bus: Bus, run_id: str, step_id: str) -> str:
    value = await Payloads(bus).get(Keys.output("t", run_id, step_id))
    assert value is not None
    return value.decode()


async def test_steps_with_the_python_tool_run_through_the_worker(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = WorkerSettings(nats=nats_settings, concurrency=4, max_tool_rounds=2, sandbox_wall_s=5.0)
    steps = [
        StepSpec(id=f"calc{i}", agent_id="a1", instruction=f"compute {i} squared with python", tools=("python",))
        for i in range(6)
    ]
    async with worker_and_gateway(bus, settings):
        results = await run_steps(bus, "run-tools", *steps)
    assert all(r.status is StepStatus.SUCCEEDED for r in results.values()), results
    events = await step_events(bus, "run-tools", results)
    assert len({e.event_id for e in events}) == len(events)  # every event id is unique, tool calls included
    tool_calls = [e for e in events if e.kind is StepEventKind.TOOL_CALL]
    # The sim model decides by a seeded draw: deterministic, and over six steps it calls the tool.
    assert tool_calls, [e.kind for e in events]
    for event in tool_calls:
        assert event.attributes["tool"] == "python" and event.attributes["outcome"] in ("ok", "error")
        assert event.duration_ms > 0
    inference_done = [e for e in events if e.kind is StepEventKind.INFERENCE_DONE]
    assert len(inference_done) >= len(steps) + len(tool_calls)
    for step in steps:
        assert (await output_of(bus, "run-tools", step.id)).strip()


async def test_inputs_come_inline_from_the_dispatch_or_else_from_the_outputs_bucket(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    await (await bus.kv(OUTPUTS_BUCKET)).put(Keys.output("t", "run-inputs", "stored"), b"from the bucket")
    steps = (
        StepSpec(id="both", agent_id="a1", instruction="merge", depends_on=("inline", "stored")),
        StepSpec(id="nowhere", agent_id="a1", instruction="merge", depends_on=("inline", "absent")),
    )
    async with worker_and_gateway(bus, WorkerSettings(nats=nats_settings)):
        results = await run_steps(bus, "run-inputs", *steps, inputs={"inline": "held by the dispatcher"})
    assert results["both"].status is StepStatus.SUCCEEDED, results["both"].error
    assert results["both"].output == await output_of(bus, "run-inputs", "both")  # small: inline and stored
    assert results["nowhere"].status is StepStatus.FAILED
    assert results["nowhere"].error == "output of dependency absent not found"


async def test_an_unknown_tool_fails_the_step_for_good(bus: Bus, nats_settings: NatsSettings) -> None:
    async with worker_and_gateway(bus, WorkerSettings(nats=nats_settings)):
        results = await run_steps(
            bus, "run-unknown",
            StepSpec(id="s1", agent_id="a1", instruction="x", tools=("python", "teleport")),
            StepSpec(id="s2", agent_id="a1", instruction="x", tools=("http_fetch",)),
        )  # fmt: skip
    for step_id, reason in (("s1", "unknown tool 'teleport'"), ("s2", "disabled")):
        result = results[step_id]
        assert result.status is StepStatus.FAILED and not result.retryable
        assert result.error and reason in result.error


SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["yes", "no"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reasons": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 3},
    },
    "required": ["verdict", "confidence", "reasons"],
    "additionalProperties": False,
}


async def test_outputs_satisfy_the_step_schema(bus: Bus, nats_settings: NatsSettings) -> None:
    steps = [
        StepSpec(id="judge", agent_id="a1", instruction="judge it", output_schema=SCHEMA),
        StepSpec(id="judge-tools", agent_id="a1", instruction="judge", output_schema=SCHEMA, tools=("scratchpad",)),
    ]
    async with worker_and_gateway(bus, WorkerSettings(nats=nats_settings, max_tool_rounds=1)):
        results = await run_steps(bus, "run-schema", *steps)
    for step in steps:
        assert results[step.id].status is StepStatus.SUCCEEDED, results[step.id]
        jsonschema.validate(json.loads(await output_of(bus, "run-schema", step.id)), SCHEMA)


async def test_large_outputs_and_inputs_travel_by_reference(bus: Bus, nats_settings: NatsSettings) -> None:
    big_input = "0123456789abcdef" * 196608  # 3 MiB
    await Payloads(bus).put(Keys.output("t", "run-big", "upstream"), big_input.encode())
    prompts: list[str] = []

    async def spy(msg: Msg) -> None:  # a plain subscriber sees the requests the gateway's queue group serves
        request = InferenceRequest.model_validate_json(msg.data)
        prompts.append(request.messages[-1].content)

    await bus.nc.subscribe(Subjects.INFER, cb=spy)
    settings = WorkerSettings(nats=nats_settings, inline_payload_bytes=1024)
    step = StepSpec(id="reader", agent_id="a1", instruction="summarize", depends_on=("upstream",), max_tokens=4000)
    async with worker_and_gateway(bus, settings, sim_completion_tokens=2000):
        results = await run_steps(bus, "run-big", step)
    assert results["reader"].status is StepStatus.SUCCEEDED, results["reader"]
    assert any("[upstream] 0123456789abcdef0123" in p for p in prompts)  # the 3 MiB input was resolved
    output = await output_of(bus, "run-big", "reader")
    assert len(output.encode()) > 1024
    marker = (await (await bus.kv(OUTPUTS_BUCKET)).get(Keys.output("t", "run-big", "reader"))).value or b""
    assert is_ref(marker)


async def test_the_scratchpad_is_shared_within_a_run(bus: Bus) -> None:
    pad = ToolRegistry.for_worker(WorkerSettings()).get("scratchpad")

    def ctx(run_id: str, step_id: str) -> ToolContext:
        return ToolContext(
            run_id=run_id, tenant="t", step_id=step_id, agent_id="a1", attempt=1, settings=WorkerSettings(), bus=bus
        )

    assert await pad.call({"op": "put", "key": "plan", "value": "v1"}, ctx("run-s", "s1")) == {"key": "plan", "size": 2}
    assert await pad.call({"op": "get", "key": "plan"}, ctx("run-s", "s2")) == {"key": "plan", "value": "v1"}
    assert await pad.call({"op": "get", "key": "plan"}, ctx("run-other", "s1")) == {"key": "plan", "value": None}
    await asyncio.gather(*(pad.call({"op": "append", "key": "log", "value": f"<{i}>"}, ctx("run-s", f"s{i}")) for i in range(10)))
    log = await pad.call({"op": "get", "key": "log"}, ctx("run-s", "s1"))
    assert isinstance(log, dict) and sorted(log["value"].replace(">", ">\n").split()) == sorted(f"<{i}>" for i in range(10))
    assert await pad.call({"op": "keys"}, ctx("run-s", "s1")) == {"keys": ["log", "plan"]}
    assert await pad.call({"op": "keys"}, ctx("run-empty", "s1")) == {"keys": []}


async def test_a_step_longer_than_ack_wait_is_kept_by_heartbeats_and_shows_it_started(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    settings = WorkerSettings(nats=nats_settings, ack_wait_s=1.0, heartbeat_s=0.25, early_events_s=1.0)
    slow = StepSpec(id="slow", agent_id="a1", instruction="think", sim_latency_ms=3000)
    async with worker_and_gateway(bus, settings, sim_latency_scale=1.0):
        results = await run_steps(bus, "run-slow", slow)
        consumer = await bus.js.consumer_info(STEPS.name, f"{WORKERS_CONSUMER_PREFIX}-default")
    assert results["slow"].status is StepStatus.SUCCEEDED
    assert consumer.delivered.consumer_seq == 1  # three ack_waits long, and delivered once
    published = await read_step_events(bus.js, "run-slow", idle_s=0.3)
    assert [e.kind for e in published][:1] == [StepEventKind.STARTED]  # before the result, by the heartbeat


async def test_without_bwrap_the_worker_warns_and_the_python_tool_fails_closed(
    bus: Bus, nats_settings: NatsSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without bubblewrap
    unavailable_reason.cache_clear()
    settings = WorkerSettings(nats=nats_settings, concurrency=4, max_tool_rounds=2)
    steps = [StepSpec(id=f"calc{i}", agent_id="a1", instruction=f"compute {i}", tools=("python",)) for i in range(6)]
    try:
        with caplog.at_level(logging.WARNING, logger="services.worker_pool"):
            async with worker_and_gateway(bus, settings):
                results = await run_steps(bus, "run-closed", *steps)
        assert any("python tool will refuse every call" in r.message and "bubblewrap" in r.message for r in caplog.records)
        assert len(results) == len(steps)  # the worker serves steps; only the python tool refuses
        ctx = ToolContext(run_id="run-closed", tenant="t", step_id="x", agent_id="a1", attempt=1, settings=settings)
        with pytest.raises(ToolError, match="python tool is unavailable on this worker: bubblewrap"):
            await ToolRegistry.for_worker(settings).get("python").call({"code": "print(1)"}, ctx)
    finally:
        unavailable_reason.cache_clear()


async def test_a_dedicated_pool_fails_another_tenants_step_at_once(bus: Bus, nats_settings: NatsSettings) -> None:
    """A step routed to a pool that does not serve its tenant: a clear, final failure, not a denied write."""
    settings = WorkerSettings(nats=nats_settings, tenants=("acme",))
    async with worker_and_gateway(bus, settings):
        results = await run_steps(bus, "run-foreign", StepSpec(id="s", agent_id="a1", instruction="go"))
    result = results["s"]
    assert result.status is StepStatus.FAILED and not result.retryable
    assert result.error == "worker pool default serves tenants acme, not t"
    with pytest.raises(KeyNotFoundError):
        await (await bus.kv(OUTPUTS_BUCKET)).get(Keys.output("t", "run-foreign", "s"))
