"""The sim backend: a seeded latency model and schema-valid outputs, for load tests and benchmarks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
import zlib
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.gateway.engine import CHARS_PER_TOKEN, Completion, EngineError, StreamItem, estimate_tokens
from services.gateway.schemagen import WORDS, SchemaUnsupported, generate_document
from services.gateway.settings import GatewaySettings
from swarm.contracts import InferenceRequest

MESSAGE_OVERHEAD_TOKENS = 4  # role markers of a chat template, per message
PROMPT_TAIL_CHARS = 4000  # the text draws its words from this much of the prompt's end
HYPHEN = ord("-")
PROMPT_WORD_MIN_CHARS = 4
SENTENCE_MIN_WORDS, SENTENCE_MAX_WORDS = 6, 18
ECHO_MAX_CHARS = 8000


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Time to first token plus decode time, times a log-normal jitter factor, times a global scale."""

    ttft_ms: float
    tokens_per_s: float
    jitter: float
    scale: float

    def mean_ms(self, completion_tokens: int) -> float:
        """The latency without jitter, before scaling."""
        return self.ttft_ms + completion_tokens * 1000.0 / self.tokens_per_s

    def sample_ms(
        self, completion_tokens: int, rng: Callable[[], random.Random], forced_ms: float | None = None
    ) -> float:
        """One latency: `forced_ms` when the request sets it, else drawn from the model (from `rng()`, made
        only then); always scaled."""
        if self.scale == 0:
            return 0.0
        if forced_ms is not None:
            return forced_ms * self.scale
        factor = rng().lognormvariate(-self.jitter * self.jitter / 2, self.jitter) if self.jitter else 1.0
        return self.mean_ms(completion_tokens) * factor * self.scale


# What a broken model or decoder emits: control bytes and a torn token, neither text nor JSON.
GARBAGE = "\x00\x1b[0m\ufffd\x07{\"ans"


def prompt_text(request: InferenceRequest) -> str:
    """All message contents, as one text."""
    return "\n".join(m.content for m in request.messages)


def _word_bytes() -> bytes:
    """A bytes.translate table: ASCII letters lower-cased, '-' kept, every other byte a word separator."""
    table = bytearray(b" " * 256)
    for c in b"abcdefghijklmnopqrstuvwxyz":
        table[c] = table[c - 32] = c
    table[ord("-")] = ord("-")
    return bytes(table)


_WORD_BYTES = _word_bytes()
_STOCK_WORDS = tuple(w.encode() for w in WORDS)
_MIN_WORD_CHARS = min(PROMPT_WORD_MIN_CHARS, *(len(w) for w in WORDS))


def prompt_words(prompt: str) -> list[bytes]:
    """The distinct words (ASCII letters and hyphens, 4 or more, starting with a letter) of the prompt's end,
    lower-cased, in order of first use."""
    # One translate and one split, in C, instead of a regex scan: this runs on every sim call. Bytes, not
    # str: the text is assembled from these and decoded once.
    tokens = dict.fromkeys(prompt[-PROMPT_TAIL_CHARS:].encode().translate(_WORD_BYTES).split())
    return [w for w in tokens if len(w) >= PROMPT_WORD_MIN_CHARS and w[0] != HYPHEN]


def _draws(seed: int, label: bytes, count: int) -> array[int]:
    """`count` pseudo-random 16-bit values, a function of (seed, label, count) only."""
    return array("H", hashlib.shake_128(b"%d:%s" % (seed, label)).digest(2 * count))


def lognormal_tokens(mean_tokens: int, seed: int) -> int:
    """A completion length with median `mean_tokens` and a log-normal spread (sigma 0.5), drawn from `seed`."""
    u1, u2 = _draws(seed, b"length", 2)
    z = math.sqrt(-2.0 * math.log((u1 + 1) / 65536)) * math.cos(2 * math.pi * u2 / 65536)  # Box-Muller
    return round(mean_tokens * math.exp(0.5 * z))


def plausible_text(prompt: str, n_tokens: int, seed: int) -> str:
    """Sentences mixing the prompt's words with a fixed vocabulary, about `n_tokens` tokens long.

    A function of (prompt, n_tokens, seed). The sim stands in for a model: its own cost is not the system's,
    so the words come from one hash output (no random.Random seeded per call), are picked in one pass and
    joined once, as bytes.
    """
    # Each prompt word once (twice the weight of a stock word): a prompt that repeats one word must not make
    # the answer a loop of it, which the worker would reject as degenerate.
    words = prompt_words(prompt)
    vocabulary = [*_STOCK_WORDS, *words, *words]
    size_v = len(vocabulary)
    target_chars = n_tokens * CHARS_PER_TOKEN
    # Just enough words to fill the text (each takes at least _MIN_WORD_CHARS and a space), which is cut at
    # target_chars; then one sentence length per SENTENCE_MIN_WORDS words, more than the words need.
    n_words = target_chars // (_MIN_WORD_CHARS + 1) + 1
    draws = _draws(seed, b"text", n_words + n_words // SENTENCE_MIN_WORDS + 1)
    text = [vocabulary[x * size_v >> 16] for x in draws[:n_words]]
    at = 0
    for x in draws[n_words:]:
        if at >= n_words:
            break
        text[at] = text[at].capitalize()
        at += SENTENCE_MIN_WORDS + x % (SENTENCE_MAX_WORDS - SENTENCE_MIN_WORDS + 1)
        text[min(at, n_words) - 1] += b"."
    return b" ".join(text)[:target_chars].rstrip().decode()


def echo(request: InferenceRequest) -> str:
    """With sim_echo: the last user message, verbatim and bounded, so a test can read what the model was asked."""
    if not request.sim_echo:
        return ""
    user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    return f"<<ECHO\n{user[:ECHO_MAX_CHARS]}\nECHO>> "


@dataclass(frozen=True, slots=True)
class SimPlan:
    """What the sim will answer for one request, and after how long."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    delay_ms: float  # the whole latency; 0 when the latency scale is 0
    ttft_ms: float  # the part before the first token


def split_tokens(text: str) -> list[str]:
    """The text in ~4-character pieces (the sim's notion of tokens), for streaming."""
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


class SimEngine:
    """Answers from a latency model; with latency_scale 0 it never sleeps (a pure messaging benchmark)."""

    name = "sim"

    def __init__(self, settings: GatewaySettings) -> None:
        self.model = settings.model_name or "sim"
        self.concurrency = settings.max_queue
        self.seed = settings.sim_seed
        self.mean_completion_tokens = settings.sim_completion_tokens
        self.context_tokens = settings.sim_context_tokens
        self.crash_marker = settings.sim_crash_marker
        self.latency = LatencyModel(
            ttft_ms=settings.sim_ttft_ms,
            tokens_per_s=settings.sim_tokens_per_s,
            jitter=settings.sim_jitter,
            scale=settings.sim_latency_scale,
        )

    def plan(self, request: InferenceRequest) -> SimPlan:
        """A deterministic completion for the prompt (schema-valid when a schema is given) and its latency."""
        prompt = prompt_text(request)
        if self.crash_marker and self.crash_marker in prompt:
            # Stands for an engine failure (CUDA error, OOM, a bug): not an EngineError on purpose.
            raise RuntimeError("sim engine crashed (the prompt holds the crash marker)")
        if request.sim_fault == "error":
            raise EngineError("sim engine error (fault injected by the request)")
        prompt_tokens = estimate_tokens(prompt) + MESSAGE_OVERHEAD_TOKENS * len(request.messages)
        if prompt_tokens > self.context_tokens:
            raise EngineError(
                f"prompt too long: {prompt_tokens} tokens, the context window is {self.context_tokens}"
            )
        # A request's seed draws another completion for the same prompt (a resample), as a real engine would.
        seed = self.seed * 1_000_003 ^ zlib.crc32(prompt.encode()) ^ (request.seed or 0)
        if request.sim_tool_call is not None:  # a scripted tool-loop decision
            call = request.sim_tool_call
            content = json.dumps(
                {"action": "tool", "tool": call.tool, "arguments": call.arguments, "answer": f"calling {call.tool}"}
            )
        elif request.sim_final:
            content = json.dumps({"action": "final", "answer": echo(request) + self._text(prompt, request, seed)})
        elif request.json_schema is not None:
            try:
                content = json.dumps(generate_document(request.json_schema, random.Random(seed)))
            except SchemaUnsupported as exc:
                raise EngineError(f"json_schema: {exc}") from exc
        else:
            content = echo(request) + self._text(prompt, request, seed)
        if request.sim_fault == "garbage":
            content = GARBAGE
        completion_tokens = estimate_tokens(content)
        delay_ms = ttft_ms = 0.0
        if self.latency.scale:
            delay_ms = self.latency.sample_ms(
                completion_tokens, lambda: random.Random(f"{self.seed}:{request.request_id}"), request.sim_latency_ms
            )
            ttft_ms = delay_ms * self.latency.ttft_ms / max(1e-9, self.latency.mean_ms(completion_tokens))
        return SimPlan(content, prompt_tokens, completion_tokens, delay_ms, ttft_ms)

    def _text(self, prompt: str, request: InferenceRequest, seed: int) -> str:
        wanted = lognormal_tokens(self.mean_completion_tokens, seed)
        return plausible_text(prompt, max(1, min(request.max_tokens, wanted)), seed)

    async def generate(self, request: InferenceRequest) -> Completion:
        """The planned completion, after the planned latency; its first token after the planned TTFT."""
        began = time.perf_counter()
        plan = self.plan(request)
        # The latency runs from the call, the sim's own work included (as a real engine's compute is): a
        # burst of requests does not add the text generation of those before it to every latency. One
        # sleep to the end, the first token's time computed: a timer per call, not one per phase.
        first_token_at = max(time.perf_counter(), began + plan.ttft_ms / 1000.0)
        if plan.delay_ms > 0:
            await asyncio.sleep(max(0.0, began + plan.delay_ms / 1000.0 - time.perf_counter()))
        return Completion(plan.content, plan.prompt_tokens, plan.completion_tokens, first_token_at=first_token_at)

    async def generate_stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]:
        """The planned completion in ~token pieces: the first after the TTFT, the rest evenly over the decode."""
        plan = self.plan(request)
        pieces = split_tokens(plan.content)
        if plan.ttft_ms > 0:
            await asyncio.sleep(plan.ttft_ms / 1000.0)
        per_piece_s = max(0.0, plan.delay_ms - plan.ttft_ms) / 1000.0 / max(1, len(pieces) - 1)
        for i, piece in enumerate(pieces):
            if i and per_piece_s:
                await asyncio.sleep(per_piece_s)
            yield piece
        yield Completion(plan.content, plan.prompt_tokens, plan.completion_tokens)

    async def close(self) -> None:
        """Nothing to release."""
