"""Synthesis: outputs of the final steps → one answer, reduced hierarchically when there are many."""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from services.aggregator.settings import AggregatorSettings
from swarm import payloads
from swarm.bus import Bus, ConsumerSpec, Retry
from swarm.contracts import (
    AGGREGATOR_CONSUMER,
    ERROR_MAX_CHARS,
    OUTPUTS_BUCKET,
    RUNS,
    InferenceRequest,
    Keys,
    MsgIds,
    RunCompleted,
    RunEventKind,
    RunExecuted,
    RunFailed,
    Subjects,
    cut,
    utc_now,
)
from swarm.inference import InferenceClient, InferenceError, chat, new_request_id
from swarm.repetition import ANSWER_LIMITS, degeneracy, missing_topics, repeated_share, topic_words

log = logging.getLogger(__name__)

MAX_TEMPERATURE = 1.5

EXECUTED_CONSUMER = ConsumerSpec(
    stream=RUNS, durable=AGGREGATOR_CONSUMER, filter_subjects=(Subjects.run_kind_all(RunEventKind.EXECUTED),),
    ack_wait_s=30.0, max_deliver=10,
)  # fmt: skip

SYSTEM = (
    "You are the synthesizer of a team of agents. Combine their findings into one clear, "
    "well-structured answer to the goal. Keep facts; drop repetition."
)


@dataclass
class Synthesis:
    """The answer and what it cost."""

    answer: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def answer_shortfall(text: str, topics: list[str]) -> str:
    """Why `text` falls short of a final answer (a loop, too short, or silent on a topic of the goal), or ''."""
    if problem := degeneracy(text, ANSWER_LIMITS):
        return problem
    missing = missing_topics(text, topics)
    return f"an answer that does not name {', '.join(missing)}" if missing else ""


def answer_rank(text: str, topics: list[str]) -> tuple[float, ...]:
    """How good an answer short of the bar is, higher is better: topics named, the bar met, least repetition."""
    return -len(missing_topics(text, topics)), -float(degeneracy(text, ANSWER_LIMITS) is not None), -repeated_share(text)


class SynthesisFailed(Exception):
    """The gateway answered with an error for a synthesis call."""


class Aggregator:
    """Consumes executed runs and publishes their final answer."""

    def __init__(self, bus: Bus, settings: AggregatorSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.inference = InferenceClient(bus.nc, bus.wait_reconnected)

    async def on_executed(self, msg: Msg) -> None:
        """Synthesize one run (settled by `swarm.bus.settle`: a gateway outage retries later)."""
        executed = RunExecuted.model_validate_json(msg.data)
        outputs = await self._outputs(executed)
        try:
            synthesis = await self.synthesize(executed.run_id, executed.goal, outputs)
        except InferenceError as exc:
            raise Retry(f"gateway unavailable: {exc}", delay_s=5.0) from exc
        except SynthesisFailed as exc:
            await self._fail(executed, str(exc))
            return
        summary = executed.summary.model_copy(
            update={
                "prompt_tokens": executed.summary.prompt_tokens + synthesis.prompt_tokens,
                "completion_tokens": executed.summary.completion_tokens + synthesis.completion_tokens,
                "wall_ms": max(0.0, (utc_now() - executed.submitted_at).total_seconds() * 1000),
            }
        )
        completed = RunCompleted(
            run_id=executed.run_id, tenant=executed.tenant, answer=synthesis.answer, summary=summary,
            missing_agents=executed.missing_agents,
        )  # fmt: skip
        await self.bus.publish(
            Subjects.run_event(executed.tenant, executed.run_id, completed.kind), completed,
            MsgIds.run_event(executed.run_id, completed.kind),
        )
        log.info("run %s completed in %.1fs", executed.run_id, summary.wall_ms / 1000)

    async def synthesize(self, run_id: str, goal: str, outputs: list[str]) -> Synthesis:
        """Reduce `outputs` in groups of `fan_in` until one answer is left."""
        if not outputs:
            raise SynthesisFailed("no step produced an output")
        total = Synthesis(answer="")
        level = outputs
        while True:
            groups = [level[i : i + self.settings.fan_in] for i in range(0, len(level), self.settings.fan_in)]
            final = len(groups) == 1
            parts = await asyncio.gather(*(self._combine(run_id, goal, group, final) for group in groups))
            for part in parts:
                total.prompt_tokens += part.prompt_tokens
                total.completion_tokens += part.completion_tokens
            if final:
                total.answer = parts[0].answer
                return total
            level = [part.answer for part in parts]

    async def _combine(self, run_id: str, goal: str, texts: list[str], final: bool) -> Synthesis:
        """One synthesis, sampled again (new seed, hotter) while it falls short; the best sample is kept.

        A partial summary must not be degenerate. The final answer must meet the stricter ANSWER_LIMITS and
        name every topic of the goal; a lone input that already does is the answer as it stands. When no
        sample meets that bar, the best one that is no loop is kept; only when all are loops does the run fail.
        """
        topics = topic_words(goal) if final else []
        if final and len(texts) == 1 and not answer_shortfall(texts[0], topics):
            return Synthesis(texts[0].strip())
        share = max(200, self.settings.context_chars // len(texts))
        findings = "\n\n".join(f"Finding {i + 1}: {text[:share]}" for i, text in enumerate(texts))
        if final:
            # Naming the goal's topics keeps a small model from answering a narrower question than was asked.
            ask = "Write the final answer in one or two paragraphs."
            ask += f" Cover each of: {', '.join(topics)}." if topics else ""
        else:
            ask = "Summarize these findings for the final answer."
        messages = chat(SYSTEM, f"Goal: {goal}\n\n{findings}\n\n{ask}")
        total = Synthesis(answer="")
        base = InferenceRequest.model_fields["temperature"].default
        best: tuple[tuple[float, ...], str] | None = None  # (rank, text) of the best sample that is no loop
        if final and len(texts) == 1 and degeneracy(texts[0]) is None:
            best = (answer_rank(texts[0], topics), texts[0].strip())  # a rewrite must do better than its input
        problem = ""
        for sample in range(1 + self.settings.resample_max):
            request = InferenceRequest(
                request_id=new_request_id(), messages=messages, max_tokens=self.settings.max_tokens,
                temperature=min(MAX_TEMPERATURE, base + sample * self.settings.resample_temperature_step),
                seed=zlib.crc32(f"{run_id}.synthesis.{len(texts)}.{sample}".encode()), run_id=run_id,
                caller="aggregator",
            )  # fmt: skip
            response = await self.inference.complete(request, timeout_s=self.settings.timeout_s)
            if not response.ok:
                raise SynthesisFailed(f"synthesis failed: {response.error}")
            total.prompt_tokens += response.prompt_tokens
            total.completion_tokens += response.completion_tokens
            text = response.content.strip()
            problem = answer_shortfall(text, topics) if final else degeneracy(text) or ""
            if not problem:
                total.answer = text
                return total
            log.warning("run %s: synthesis sample %d rejected: %s", run_id, sample + 1, problem)
            if degeneracy(text) is None and (best is None or answer_rank(text, topics) > best[0]):
                best = (answer_rank(text, topics), text)
        if best is not None:
            total.answer = best[1]
            return total
        raise SynthesisFailed(f"synthesis failed: every sample was degenerate; the last was {problem}")

    async def _outputs(self, executed: RunExecuted) -> list[str]:
        kv = await self.bus.kv(OUTPUTS_BUCKET)
        outputs = []
        for step_id in executed.sink_step_ids:
            try:
                entry = await kv.get(Keys.output(executed.tenant, executed.run_id, step_id))
            except KeyNotFoundError:
                log.warning("run %s: output of %s is missing", executed.run_id, step_id)
                continue
            outputs.append((await payloads.resolve(self.bus, entry.value or b"")).decode())
        return outputs

    async def _fail(self, executed: RunExecuted, error: str) -> None:
        failed = RunFailed(
            run_id=executed.run_id, tenant=executed.tenant, error=cut(error, ERROR_MAX_CHARS), summary=executed.summary,
            missing_agents=executed.missing_agents,
        )  # fmt: skip
        await self.bus.publish(
            Subjects.run_event(executed.tenant, executed.run_id, failed.kind), failed,
            MsgIds.run_event(executed.run_id, failed.kind),
        )
