"""The trtllm backend against the FAKE tensorrt_llm in tests/fakes (the real package needs CUDA).

The fake records every call and checks arguments the way the real LLM API would refuse them: these
tests pin what we pass (TP size, guided decoding backend and params, sampling params, chat template).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from services.gateway.engine import Completion, EngineError, create_engine
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest
from swarm.inference import chat

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 10}, "n": {"type": "integer", "minimum": 3}},
    "required": ["title", "n"],
    "additionalProperties": False,
}


@pytest.fixture
def fake_trtllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """FAKE tensorrt_llm on sys.path (and out of sys.modules afterwards); its CALLS list starts empty."""
    monkeypatch.syspath_prepend(str(FAKES))
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)
    import tensorrt_llm

    assert tensorrt_llm.__doc__ and tensorrt_llm.__doc__.startswith("FAKE")
    tensorrt_llm.CALLS.clear()
    yield tensorrt_llm
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


def calls(fake: ModuleType, name: str) -> list[dict[str, Any]]:
    return [kwargs for call, kwargs in fake.CALLS if call == name]


def request(**fields: Any) -> InferenceRequest:
    return InferenceRequest(request_id="t1", messages=chat("You are terse.", "Plan a trip."), **fields)


def test_the_backend_is_not_imported_until_chosen() -> None:
    create_engine(GatewaySettings(backend="sim"))
    assert "tensorrt_llm" not in sys.modules


def test_missing_package_is_a_clear_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as on a machine without CUDA
    with pytest.raises(RuntimeError, match="needs tensorrt-llm"):
        create_engine(GatewaySettings(backend="trtllm", trtllm_model="org/Model-1B"))


def test_llm_is_built_for_tensor_parallel_4_with_guided_decoding(fake_trtllm: ModuleType) -> None:
    engine = create_engine(GatewaySettings(backend="trtllm", trtllm_model="/models/Llama-3.1-8B-Instruct"))
    (llm_args,) = calls(fake_trtllm, "LLM")
    assert llm_args["model"] == "/models/Llama-3.1-8B-Instruct"
    assert llm_args["tensor_parallel_size"] == 4
    assert llm_args["guided_decoding_backend"] == "xgrammar"
    assert llm_args["max_seq_len"] == 8192 and llm_args["max_batch_size"] == 256
    assert engine.model == "Llama-3.1-8B-Instruct" and engine.concurrency == 256


def test_tensor_parallel_size_and_grammar_backend_come_from_settings(fake_trtllm: ModuleType) -> None:
    create_engine(
        GatewaySettings(
            backend="trtllm", trtllm_model="m", tensor_parallel_size=1, trtllm_guided_decoding_backend="llguidance"
        )
    )
    (llm_args,) = calls(fake_trtllm, "LLM")
    assert llm_args["tensor_parallel_size"] == 1 and llm_args["guided_decoding_backend"] == "llguidance"


async def test_generate_maps_sampling_params_and_applies_the_chat_template(fake_trtllm: ModuleType) -> None:
    engine = create_engine(GatewaySettings(backend="trtllm", trtllm_model="m"))
    completion = await engine.generate(request(max_tokens=12, temperature=0.7))
    (template,) = calls(fake_trtllm, "apply_chat_template")
    assert template["add_generation_prompt"] is True and template["tokenize"] is False
    assert [m["role"] for m in template["conversation"]] == ["system", "user"]
    (generate,) = calls(fake_trtllm, "generate_async")
    params = generate["sampling_params"]
    assert params.max_tokens == 12 and params.temperature == 0.7 and params.guided_decoding is None
    assert generate["streaming"] is False and isinstance(generate["inputs"], list)
    assert completion.completion_tokens == 12 and completion.prompt_tokens == len(generate["inputs"])
    assert completion.content


async def test_json_schema_goes_to_guided_decoding_and_the_output_validates(fake_trtllm: ModuleType) -> None:
    engine = create_engine(GatewaySettings(backend="trtllm", trtllm_model="m"))
    completion = await engine.generate(request(json_schema=SCHEMA))
    (generate,) = calls(fake_trtllm, "generate_async")
    guided = generate["sampling_params"].guided_decoding
    assert guided is not None and guided.json == SCHEMA and guided.regex is None
    jsonschema.validate(json.loads(completion.content), SCHEMA)


async def test_streaming_yields_deltas_then_the_completion(fake_trtllm: ModuleType) -> None:
    engine = create_engine(GatewaySettings(backend="trtllm", trtllm_model="m"))
    items = [item async for item in engine.generate_stream(request(max_tokens=8))]
    *deltas, completion = items
    assert isinstance(completion, Completion) and all(isinstance(d, str) for d in deltas)
    assert len(deltas) == 8 and "".join(deltas) == completion.content  # type: ignore[arg-type]
    (generate,) = calls(fake_trtllm, "generate_async")
    assert generate["streaming"] is True


async def test_prompt_over_the_context_window_is_refused_before_generating(fake_trtllm: ModuleType) -> None:
    engine = create_engine(GatewaySettings(backend="trtllm", trtllm_model="m", trtllm_max_seq_len=64))
    with pytest.raises(EngineError, match="prompt too long"):
        await engine.generate(InferenceRequest(request_id="long", messages=chat("x", "word " * 200)))
    assert calls(fake_trtllm, "generate_async") == []
    # max_tokens is clipped to the room left, so the LLM never sees an over-long request
    await engine.generate(InferenceRequest(request_id="short", messages=chat("x", "hi"), max_tokens=4096))
    (generate,) = calls(fake_trtllm, "generate_async")
    assert len(generate["inputs"]) + generate["sampling_params"].max_tokens <= 64


async def test_close_shuts_the_llm_down(fake_trtllm: ModuleType) -> None:
    engine = create_engine(GatewaySettings(backend="trtllm", trtllm_model="m"))
    await engine.close()
    assert calls(fake_trtllm, "shutdown") == [{}]


def test_tensorrt_runtime_loads_a_built_engine_directory(fake_trtllm: ModuleType) -> None:
    create_engine(
        GatewaySettings(
            backend="trtllm", trtllm_model="/engines/llama-tp4", trtllm_tokenizer="/models/llama",
            trtllm_runtime="tensorrt",
        )
    )  # fmt: skip
    assert calls(fake_trtllm, "tensorrt_engine.LLM") == [{"model": "/engines/llama-tp4"}]
    (llm_args,) = calls(fake_trtllm, "LLM")
    assert llm_args["tensor_parallel_size"] == 4 and llm_args["tokenizer"] == "/models/llama"
