"""The trtllm backend against the FAKE tensorrt_llm in tests/fakes (the real package needs CUDA).

The fake records every call and refuses what the real LLM API refuses (unknown arguments, a tokenizer it
cannot load, llguidance on the TensorRT runtime, prompts over max_num_tokens): these tests pin what we pass
(TP size, limits, guided decoding, sampling params, chat template), that the settings refuse the combinations
that would fail at start-up, and that a request nobody waits for is aborted inside the engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from services.gateway import gpu_smoke
from services.gateway.backends import create_engine
from services.gateway.engine import Completion, EngineError
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest
from swarm.inference import chat

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 10}, "n": {"type": "integer", "minimum": 3}},
    "required": ["title", "n"],
    "additionalProperties": False,
}
HOLD_S = 3600.0  # the fake's seconds per token while a test keeps a request running (it is cancelled first)


def calls(fake: ModuleType, name: str) -> list[dict[str, Any]]:
    return [kwargs for call, kwargs in fake.CALLS if call == name]


def request(**fields: Any) -> InferenceRequest:
    return InferenceRequest(request_id="t1", messages=chat("You are terse.", "Plan a trip."), **fields)


def trtllm(model: Path | str, **fields: Any) -> GatewaySettings:
    return GatewaySettings(backend="trtllm", trtllm_model=str(model), **fields)


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    """An engine directory as trtllm-build leaves it: config.json with the build limits, no tokenizer."""
    engine = tmp_path / "engines" / "engine-tp4"
    engine.mkdir(parents=True)
    (engine / "config.json").write_text(
        json.dumps({"build_config": {"max_seq_len": 8192, "max_batch_size": 256}})
    )
    (engine / "rank0.engine").write_bytes(b"")
    return engine


# ------------------------------------------------------------------ settings: combinations refused at start-up


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"trtllm_model": ""}, "SWARM_GATEWAY_TRTLLM_MODEL is required"),
        (
            {"trtllm_runtime": "tensorrt", "trtllm_tokenizer": "/models/checkpoint",
             "trtllm_guided_decoding_backend": "llguidance"},
            "llguidance runs on TensorRT-LLM's PyTorch runtime only",
        ),
        ({"trtllm_runtime": "tensorrt"}, "an engine directory holds no tokenizer"),
        ({"trtllm_max_seq_len": 32768}, "MAX_NUM_TOKENS=8192 is below SWARM_GATEWAY_TRTLLM_MAX_SEQ_LEN=32768"),
        ({"trtllm_max_num_tokens": 4096}, "raise it to at least max_seq_len or set"),
    ],
)  # fmt: skip
def test_settings_refuse_combinations_tensorrt_llm_would_fail_on(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**{"backend": "trtllm", "trtllm_model": "/engines/engine-tp4", **fields})


def test_settings_accept_long_contexts_with_chunked_prefill_or_enough_tokens() -> None:
    chunked = trtllm("/m", trtllm_max_seq_len=32768, trtllm_enable_chunked_prefill=True)
    assert chunked.trtllm_max_num_tokens == 8192
    trtllm("/m", trtllm_max_seq_len=32768, trtllm_max_num_tokens=32768)
    trtllm("/e", trtllm_runtime="tensorrt", trtllm_tokenizer="/models/checkpoint")
    # Other backends do not care about trtllm settings.
    GatewaySettings(backend="sim", trtllm_runtime="tensorrt", trtllm_guided_decoding_backend="llguidance")


def test_the_refused_combinations_fail_in_tensorrt_llm_too(
    fake_trtllm: ModuleType, engine_dir: Path, hf_checkpoint: Path
) -> None:
    """Without the settings' guard, these are the errors the gateway would die of at start-up."""
    from tensorrt_llm._tensorrt_engine import LLM as EngineLLM

    with pytest.raises(ValueError, match="Unsupported guided decoding backend llguidance"):
        EngineLLM(str(engine_dir), tokenizer=str(hf_checkpoint), guided_decoding_backend="llguidance")
    with pytest.raises(AttributeError, match="eos_token_id"):  # xgrammar reads a tokenizer that is not there
        EngineLLM(str(engine_dir), guided_decoding_backend="xgrammar")
    llm = fake_trtllm.LLM(str(hf_checkpoint), max_seq_len=16384)  # max_num_tokens left at its 8192
    with pytest.raises(ValueError, match="should not exceed max_num_tokens"):
        llm.generate_async(list(range(10_000)), sampling_params=fake_trtllm.SamplingParams(max_tokens=8))


# ------------------------------------------------------------------ loading


def test_the_backend_is_not_imported_until_chosen() -> None:
    create_engine(GatewaySettings(backend="sim"))
    assert "tensorrt_llm" not in sys.modules


def test_missing_package_is_a_clear_start_up_error(
    monkeypatch: pytest.MonkeyPatch, hf_checkpoint: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as on a machine without CUDA
    with pytest.raises(RuntimeError, match="needs tensorrt-llm"):
        create_engine(trtllm(hf_checkpoint))


def test_a_checkpoint_directory_not_fetched_yet_is_a_clear_start_up_error(
    fake_trtllm: ModuleType, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="is not a directory: fetch the checkpoint first"):
        create_engine(trtllm(tmp_path / "models" / "checkpoint"))
    assert calls(fake_trtllm, "LLM") == []


def test_offline_the_tokenizer_loads_from_the_local_checkpoint_never_the_hub(
    fake_trtllm: ModuleType, hf_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):  # what the old compose file did: a Hub name
        create_engine(trtllm("meta-llama/Llama-3.1-8B-Instruct"))
    engine = create_engine(trtllm(hf_checkpoint))
    assert engine.model == "checkpoint"


def test_llm_is_built_for_tensor_parallel_4_with_guided_decoding_and_token_limits(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    (llm_args,) = calls(fake_trtllm, "LLM")
    assert llm_args["model"] == str(hf_checkpoint) and llm_args["tokenizer"] is None
    assert llm_args["tensor_parallel_size"] == 4
    assert llm_args["guided_decoding_backend"] == "xgrammar"
    assert llm_args["max_seq_len"] == 8192 and llm_args["max_batch_size"] == 256
    assert llm_args["max_num_tokens"] == 8192 and llm_args["enable_chunked_prefill"] is False
    assert engine.model == "checkpoint" and engine.concurrency == 256


def test_tensor_parallel_size_grammar_backend_and_chunked_prefill_come_from_settings(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    create_engine(
        trtllm(hf_checkpoint, tensor_parallel_size=1, trtllm_guided_decoding_backend="llguidance",
               trtllm_max_seq_len=32768, trtllm_enable_chunked_prefill=True, trtllm_max_num_tokens=2048)
    )  # fmt: skip
    (llm_args,) = calls(fake_trtllm, "LLM")
    assert llm_args["tensor_parallel_size"] == 1 and llm_args["guided_decoding_backend"] == "llguidance"
    assert llm_args["max_num_tokens"] == 2048 and llm_args["enable_chunked_prefill"] is True


@pytest.mark.parametrize(
    "fields",
    [{"trtllm_max_num_tokens": 16384}, {"trtllm_enable_chunked_prefill": True}],
    ids=["max_num_tokens", "chunked_prefill"],
)
async def test_prompts_longer_than_8192_tokens_run_with_max_num_tokens_or_chunked_prefill(
    fake_trtllm: ModuleType, hf_checkpoint: Path, fields: dict[str, Any]
) -> None:
    engine = create_engine(trtllm(hf_checkpoint, trtllm_max_seq_len=16384, **fields))
    long_prompt = "word " * 8000  # ~10,000 fake tokens
    completion = await engine.generate(
        InferenceRequest(request_id="long", messages=chat("x", long_prompt), max_tokens=4)
    )
    assert completion.prompt_tokens > 8192 and completion.completion_tokens == 4


def test_tensorrt_runtime_loads_a_built_engine_with_the_checkpoints_tokenizer(
    fake_trtllm: ModuleType, engine_dir: Path, hf_checkpoint: Path
) -> None:
    create_engine(trtllm(engine_dir, trtllm_tokenizer=str(hf_checkpoint), trtllm_runtime="tensorrt"))
    assert calls(fake_trtllm, "tensorrt_engine.LLM") == [{"model": str(engine_dir)}]
    (llm_args,) = calls(fake_trtllm, "LLM")
    assert llm_args["tensor_parallel_size"] == 4 and llm_args["tokenizer"] == str(hf_checkpoint)
    assert llm_args["max_seq_len"] is None and llm_args["max_num_tokens"] == 8192  # the rest is baked in


# ------------------------------------------------------------------ generating


async def test_generate_maps_sampling_params_and_applies_the_chat_template(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    completion = await engine.generate(request(max_tokens=12, temperature=0.7))
    (template,) = calls(fake_trtllm, "apply_chat_template")
    assert template["add_generation_prompt"] is True and template["tokenize"] is False
    assert [m["role"] for m in template["conversation"]] == ["system", "user"]
    (generate,) = calls(fake_trtllm, "generate_async")
    params = generate["sampling_params"]
    assert params.max_tokens == 12 and params.temperature == 0.7 and params.guided_decoding is None
    # Streamed and collected, so that a whole reply knows its time to first token too.
    assert generate["streaming"] is True and isinstance(generate["inputs"], list)
    assert completion.completion_tokens == 12 and completion.prompt_tokens == len(generate["inputs"])
    assert completion.content and completion.first_token_at is not None
    assert calls(fake_trtllm, "abort") == []  # a finished request is not aborted


async def test_repetition_controls_and_the_seed_map_onto_sampling_params(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    await engine.generate(request(repetition_penalty=1.15, frequency_penalty=0.2, presence_penalty=0.1, seed=7))
    await engine.generate(request())
    tuned, plain = (call["sampling_params"] for call in calls(fake_trtllm, "generate_async"))
    assert (tuned.repetition_penalty, tuned.frequency_penalty, tuned.presence_penalty, tuned.seed) == (1.15, 0.2, 0.1, 7)
    assert (plain.repetition_penalty, plain.frequency_penalty, plain.presence_penalty, plain.seed) == (None,) * 4


def test_the_fake_refuses_keyword_arguments_generate_async_does_not_take(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    llm = fake_trtllm.LLM(str(hf_checkpoint))
    with pytest.raises(TypeError, match="stream"):
        llm.generate_async([1, 2, 3], sampling_params=fake_trtllm.SamplingParams(), stream=True)
    with pytest.raises(ValueError, match="invalid argument: max_tokens"):
        fake_trtllm.LLM(str(hf_checkpoint), max_tokens=5)


async def test_json_schema_goes_to_guided_decoding_and_the_output_validates(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    completion = await engine.generate(request(json_schema=SCHEMA))
    (generate,) = calls(fake_trtllm, "generate_async")
    guided = generate["sampling_params"].guided_decoding
    assert guided is not None and guided.json == SCHEMA and guided.regex is None
    jsonschema.validate(json.loads(completion.content), SCHEMA)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_json_cut_by_max_tokens_says_so(
    fake_trtllm: ModuleType, hf_checkpoint: Path, stream: bool
) -> None:
    """finish_reason='length' from TensorRT-LLM turns into the max_tokens hint of the error."""
    engine = create_engine(trtllm(hf_checkpoint))
    with pytest.raises(EngineError, match=r"not valid JSON \(stopped by max_tokens=3\)"):
        if stream:
            [item async for item in engine.generate_stream(request(json_schema=SCHEMA, max_tokens=3))]
        else:
            await engine.generate(request(json_schema=SCHEMA, max_tokens=3))


async def test_streaming_yields_deltas_then_the_completion(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    items = [item async for item in engine.generate_stream(request(max_tokens=8))]
    *deltas, completion = items
    assert isinstance(completion, Completion) and all(isinstance(d, str) for d in deltas)
    assert len(deltas) == 8 and "".join(deltas) == completion.content  # type: ignore[arg-type]
    (generate,) = calls(fake_trtllm, "generate_async")
    assert generate["streaming"] is True
    assert calls(fake_trtllm, "abort") == []


async def test_prompt_over_the_context_window_is_refused_before_generating(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint, trtllm_max_seq_len=64, trtllm_max_num_tokens=64))
    with pytest.raises(EngineError, match="prompt too long"):
        await engine.generate(InferenceRequest(request_id="long", messages=chat("x", "word " * 200)))
    assert calls(fake_trtllm, "generate_async") == []
    # max_tokens is clipped to the room left, so the LLM never sees an over-long request
    await engine.generate(InferenceRequest(request_id="short", messages=chat("x", "hi"), max_tokens=4096))
    (generate,) = calls(fake_trtllm, "generate_async")
    assert len(generate["inputs"]) + generate["sampling_params"].max_tokens <= 64


# ------------------------------------------------------------------ abort: nobody waits any more


async def test_a_deadline_aborts_the_request_inside_the_engine(
    fake_trtllm: ModuleType, hf_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    monkeypatch.setattr(fake_trtllm, "STEP_S", HOLD_S)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # how the gateway enforces deadline_ms
            await engine.generate(request(max_tokens=100))
    assert calls(fake_trtllm, "abort") == [{"request_id": 1, "finished": False}]


async def test_a_deadline_while_streaming_aborts_the_request(
    fake_trtllm: ModuleType, hf_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    received: list[object] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            async for item in engine.generate_stream(request(max_tokens=100)):
                received.append(item)
                monkeypatch.setattr(fake_trtllm, "STEP_S", HOLD_S)  # the next token never comes in time
    assert len(received) == 1
    assert calls(fake_trtllm, "abort") == [{"request_id": 1, "finished": False}]


async def test_a_stream_closed_by_its_reader_aborts_the_request(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    stream = engine.generate_stream(request(max_tokens=100))
    first = await anext(aiter(stream))
    await stream.aclose()  # type: ignore[attr-defined]  # what the gateway does when it stops reading
    assert isinstance(first, str)
    assert calls(fake_trtllm, "abort") == [{"request_id": 1, "finished": False}]


async def test_a_cancelled_task_aborts_its_request_and_the_next_one_runs(
    fake_trtllm: ModuleType, hf_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    monkeypatch.setattr(fake_trtllm, "STEP_S", HOLD_S)
    task = asyncio.create_task(engine.generate(request(max_tokens=100)))
    await asyncio.sleep(0)  # the task runs up to its first wait: inside the engine, generating
    assert len(calls(fake_trtllm, "generate_async")) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls(fake_trtllm, "abort") == [{"request_id": 1, "finished": False}]
    monkeypatch.setattr(fake_trtllm, "STEP_S", 0.0)
    completion = await engine.generate(request(max_tokens=5))
    assert completion.completion_tokens == 5 and len(calls(fake_trtllm, "abort")) == 1


async def test_close_shuts_the_llm_down(fake_trtllm: ModuleType, hf_checkpoint: Path) -> None:
    engine = create_engine(trtllm(hf_checkpoint))
    await engine.close()
    assert calls(fake_trtllm, "shutdown") == [{}]


# ------------------------------------------------------------------ the GPU smoke script, on the fake


async def test_gpu_smoke_runs_every_check_on_a_local_checkpoint(
    fake_trtllm: ModuleType, hf_checkpoint: Path
) -> None:
    args = SimpleNamespace(model=str(hf_checkpoint), tokenizer="", runtime="pytorch", tp=1)
    summary: dict[str, Any] = {"backend": "trtllm", "checks": {}}
    await gpu_smoke.smoke(args, summary)  # type: ignore[arg-type]
    assert summary["checks"] == dict.fromkeys(gpu_smoke.CHECKS, True)
    assert summary["guided_json_valid"] is True and summary["tokens_per_s"] > 0 and summary["ttft_ms"] > 0
    assert len(calls(fake_trtllm, "abort")) == 1 and calls(fake_trtllm, "shutdown") == [{}]
    json.dumps(summary)  # the summary line is JSON


def test_gpu_smoke_command_works_offline_and_ends_with_a_json_summary(
    hf_checkpoint: Path, tmp_path: Path
) -> None:
    """The whole script as an operator runs it, with FAKE nvidia-smi and tensorrt_llm, and no Hub access."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'FAKE GPU, 81559 MiB, 575.57'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    fakes = Path(__file__).resolve().parents[1] / "fakes"
    done = subprocess.run(
        [sys.executable, gpu_smoke.__file__, "--model", str(hf_checkpoint), "--no-install"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([str(fakes), *sys.path])},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["backend"] == "trtllm" and summary["tp"] == 1
    assert summary["guided_json_valid"] is True and summary["model"] == "checkpoint"
    assert {"tokens_per_s", "ttft_ms", "load_s"} <= set(summary)
