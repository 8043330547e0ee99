"""Deadlines reach TensorRT-LLM: a trtllm gateway (FAKE tensorrt_llm) on a real nats-server aborts the request.

The fake records `abort()`; the real one frees the request's batch slot and KV cache. The gateway's own slot
is free again too: the next request is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest

from services.gateway.backends import create_engine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from swarm.bus import Bus
from swarm.contracts import InferenceRequest, InferenceResponse
from swarm.inference import DEADLINE_EXCEEDED, InferenceClient, chat
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

HOLD_S = 3600.0  # the fake's seconds per token: the request runs until its deadline


@pytest.fixture
async def gateway(
    fake_trtllm: ModuleType, hf_checkpoint: Path, nats_settings: NatsSettings, bus: Bus
) -> AsyncIterator[GatewayServer]:
    """A trtllm gateway with one slot, on its own connection."""
    settings = GatewaySettings(
        backend="trtllm", trtllm_model=str(hf_checkpoint), tensor_parallel_size=1, slots=1
    )
    gateway_bus = await Bus.connect(nats_settings, "gateway-test")
    server = GatewayServer(gateway_bus, create_engine(settings), settings)
    await server.start()
    await gateway_bus.nc.flush()
    yield server
    await server.stop()
    await gateway_bus.close()
    await server.engine.close()


def aborts(fake: ModuleType) -> list[dict[str, object]]:
    return [kwargs for call, kwargs in fake.CALLS if call == "abort"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_deadline_aborts_the_request_in_the_engine_and_frees_the_slot(
    bus: Bus, gateway: GatewayServer, fake_trtllm: ModuleType, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    client = InferenceClient(bus.nc)
    monkeypatch.setattr(fake_trtllm, "STEP_S", HOLD_S)
    held = InferenceRequest(
        request_id="held",
        messages=chat("x", "Write at length."),
        max_tokens=500,
        deadline_ms=300,
        stream=stream,
    )
    if stream:
        items = [item async for item in client.stream(held, timeout_s=10)]
        response = items[-1]
    else:
        response = await client.complete(held, timeout_s=10)
    assert isinstance(response, InferenceResponse)
    assert not response.ok and response.error and response.error.startswith(DEADLINE_EXCEEDED)
    assert aborts(fake_trtllm) == [{"request_id": 1, "finished": False}]
    assert gateway.running == 0 and gateway.in_flight == 0

    monkeypatch.setattr(fake_trtllm, "STEP_S", 0.0)
    served = await client.complete(
        InferenceRequest(request_id="next", messages=chat("x", "hi"), max_tokens=4), timeout_s=10
    )
    assert served.ok and served.completion_tokens == 4 and len(aborts(fake_trtllm)) == 1
