"""The openai backend's request body: OpenAI-style sampling fields pass through only when a request names them."""

from __future__ import annotations

from services.gateway.backends.openai import OpenAIEngine
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest
from swarm.inference import chat


async def test_repetition_controls_and_seed_travel_only_when_asked() -> None:
    engine = OpenAIEngine(GatewaySettings(backend="openai", openai_model="m"))  # a named model: no GET /models
    try:
        plain = InferenceRequest(request_id="r1", messages=chat("s", "u"))
        body = engine._body(plain, stream=False)
        assert not {"seed", "frequency_penalty", "presence_penalty", "repetition_penalty"} & body.keys()
        asked = plain.model_copy(
            update={"seed": 3, "frequency_penalty": 0.4, "presence_penalty": -0.5, "repetition_penalty": 1.1}
        )
        body = engine._body(asked, stream=True)
        assert (body["seed"], body["frequency_penalty"], body["presence_penalty"]) == (3, 0.4, -0.5)
        assert body["repetition_penalty"] == 1.1 and "repeat_penalty" not in body  # OpenAI-dialect servers
    finally:
        await engine.close()


async def test_llama_cpp_servers_get_repeat_penalty_by_its_own_name() -> None:
    settings = GatewaySettings(backend="openai", openai_model="m", openai_schema_format="json_object")
    engine = OpenAIEngine(settings)
    try:
        request = InferenceRequest(request_id="r1", messages=chat("s", "u"), repetition_penalty=1.2)
        assert engine._body(request, stream=False)["repeat_penalty"] == 1.2
    finally:
        await engine.close()
