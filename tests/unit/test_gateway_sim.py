"""The sim backend: its latency model, its zero-latency fast path, and its deterministic outputs."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from typing import Any

import jsonschema
import pytest

from services.gateway.backends import create_engine
from services.gateway.backends import sim as sim_backend
from services.gateway.backends.sim import LatencyModel, SimEngine
from services.gateway.engine import EngineError, estimate_tokens
from services.gateway.settings import GatewaySettings
from swarm.contracts import ChatMessage, InferenceRequest

MESSAGES = (
    ChatMessage(role="system", content="You are terse."),
    ChatMessage(role="user", content="Compare wind and solar costs"),
)


def request(request_id: str = "r1", **fields: Any) -> InferenceRequest:
    return InferenceRequest(request_id=request_id, messages=MESSAGES, **fields)


def sim(**fields: Any) -> SimEngine:
    engine = create_engine(GatewaySettings(backend="sim", **fields))
    assert isinstance(engine, SimEngine)
    return engine


def test_latency_is_ttft_plus_decode_time_times_scale() -> None:
    model = LatencyModel(ttft_ms=100, tokens_per_s=50, jitter=0, scale=2.0)
    assert model.sample_ms(100, lambda: random.Random(0)) == pytest.approx((100 + 2000) * 2.0)


def test_jitter_keeps_the_mean_and_spreads_the_values() -> None:
    model = LatencyModel(ttft_ms=100, tokens_per_s=100, jitter=0.3, scale=1.0)
    rng = random.Random(1)
    samples = [model.sample_ms(100, lambda: rng) for _ in range(20_000)]
    assert statistics.fmean(samples) == pytest.approx(model.mean_ms(100), rel=0.03)
    assert statistics.pstdev(samples) > 0.2 * model.mean_ms(100)


def test_forced_latency_is_exact_and_scaled() -> None:
    model = LatencyModel(ttft_ms=100, tokens_per_s=100, jitter=0.5, scale=0.5)
    assert model.sample_ms(10, lambda: random.Random(0), forced_ms=40.0) == 20.0
    assert LatencyModel(100, 100, 0.5, scale=0).sample_ms(10, lambda: random.Random(0), forced_ms=40.0) == 0.0


async def test_scale_zero_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(delay: float, result: Any = None) -> Any:
        raise AssertionError(f"slept {delay}s at latency_scale 0")

    engine = sim(sim_latency_scale=0)
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    started = time.perf_counter()
    for i in range(2000):
        await engine.generate(request(f"r{i}", sim_latency_ms=500 if i % 2 else None))
    assert time.perf_counter() - started < 2.0  # ~0.1 ms each here; the bound only catches a hidden wait


async def test_forced_latency_is_slept() -> None:
    engine = sim(sim_latency_scale=1.0)
    started = time.perf_counter()
    await engine.generate(request(sim_latency_ms=80))
    assert time.perf_counter() - started >= 0.075


async def test_a_call_sleeps_once_to_its_end_and_dates_its_first_token_at_the_ttft(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One timer per call (each wakes the gateway): the first token's time is computed, not slept to."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay: float, result: Any = None) -> Any:
        slept.append(delay)
        return await real_sleep(delay, result)

    engine = sim(sim_latency_scale=1.0, sim_ttft_ms=30, sim_tokens_per_s=2000, sim_jitter=0)
    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    began = time.perf_counter()
    completion = await engine.generate(request())
    ended = time.perf_counter()
    plan = engine.plan(request())
    assert plan.delay_ms > plan.ttft_ms > 0
    assert len(slept) == 1 and slept[0] == pytest.approx(plan.delay_ms / 1000, abs=0.01)
    assert completion.first_token_at is not None
    assert began + plan.ttft_ms / 1000 <= completion.first_token_at < ended


async def test_text_is_deterministic_per_prompt_and_bounded_by_max_tokens() -> None:
    engine = sim(sim_latency_scale=0, sim_seed=3)
    first, again = await engine.generate(request("a")), await engine.generate(request("b"))
    assert first.content == again.content and first.content
    short = await engine.generate(request(max_tokens=5))
    assert short.completion_tokens <= 5
    assert first.completion_tokens == estimate_tokens(first.content)
    assert first.prompt_tokens >= estimate_tokens("Compare wind and solar costs")
    other_seed = await sim(sim_latency_scale=0, sim_seed=4).generate(request("a"))
    assert other_seed.content != first.content


async def test_schema_output_validates() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 30},
              "confidence": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["answer", "confidence"]}  # fmt: skip
    completion = await sim(sim_latency_scale=0).generate(request(json_schema=schema))
    jsonschema.validate(json.loads(completion.content), schema)


async def test_unsatisfiable_schema_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="json_schema"):
        await sim(sim_latency_scale=0).generate(
            request(json_schema={"type": "integer", "minimum": 5, "maximum": 1})
        )


def test_prompt_words_are_the_distinct_longer_words_lower_cased_in_order() -> None:
    words = sim_backend.prompt_words("Compare wind-power COSTS: wind, solar (2024), and the Zürich grid; wind.")
    assert words == [b"compare", b"wind-power", b"costs", b"wind", b"solar", b"rich", b"grid"]
    assert sim_backend.prompt_words("x" * 10 + " early " + "y" * sim_backend.PROMPT_TAIL_CHARS) == [b"y" * 4000]


def test_plausible_text_is_a_function_of_prompt_length_and_seed() -> None:
    prompt = "Compare solar, wind and hydro power in Germany, Spain and Norway."
    text = sim_backend.plausible_text(prompt, 64, 7)
    assert text == sim_backend.plausible_text(prompt, 64, 7) != sim_backend.plausible_text(prompt, 64, 8)
    assert 64 * 4 - 20 < len(text) <= 64 * 4 and text[0].isupper()
    assert {"solar", "wind", "norway"} & set(text.lower().replace(".", "").split())


@pytest.mark.parametrize("prompt", ["", "able bake cane dark each", "Compare solar, wind and hydro power."])
def test_plausible_text_fills_its_length_with_sentences(prompt: str) -> None:
    for seed in range(30):
        text = sim_backend.plausible_text(prompt, 50, seed)
        assert len(text) in (199, 200)  # cut at 4 characters per token (a space at the cut is stripped)
        sentences = [s.strip() for s in text.split(".")[:-1]]
        assert sentences and all(s[0].isupper() and 6 <= len(s.split()) <= 18 for s in sentences)


def test_completion_lengths_are_log_normal_around_the_mean() -> None:
    lengths = [sim_backend.lognormal_tokens(64, seed) for seed in range(4000)]
    assert lengths[:50] == [sim_backend.lognormal_tokens(64, seed) for seed in range(50)]
    assert statistics.median(lengths) == pytest.approx(64, rel=0.05)
    assert statistics.pstdev([math.log(n) for n in lengths]) == pytest.approx(0.5, rel=0.1)
