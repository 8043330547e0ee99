"""Executing one agent step: context from dependencies, inference (with tools or a schema), output stored, result reported."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import socket
import zlib
from datetime import datetime
from typing import Any, Literal

import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from pydantic import TypeAdapter, ValidationError

from services.worker_pool.errors import StepFailed
from services.worker_pool.reporting import ResultSender
from services.worker_pool.settings import WorkerSettings
from services.worker_pool.toolloop import RESULT_PREFIX, ToolCall, ToolLoop
from services.worker_pool.tools import ToolContext, ToolRegistry, UnknownTool
from services.worker_pool.validation import ModelReply, structured_output, validator_for
from swarm.bus import Bus, ConsumerSpec, Retry
from swarm.contracts import (
    ERROR_MAX_CHARS,
    INLINE_OUTPUT_MAX_CHARS,
    MEMORY_BUCKET,
    OUTPUTS_BUCKET,
    RESULT_EVENTS_MAX,
    RUN_STATE_BUCKET,
    STEPS,
    WORKERS_CONSUMER_PREFIX,
    BucketSpec,
    ChatMessage,
    InferenceRequest,
    Keys,
    MemoryMode,
    MemoryPolicy,
    MemoryToolCall,
    MemoryTurn,
    RunCancelled,
    RunEventKind,
    RunFailed,
    SimToolCall,
    SpawnRequest,
    StepDispatch,
    StepEvent,
    StepEventBatch,
    StepEventKind,
    StepResult,
    StepStatus,
    Subjects,
    cut,
    step_event_id,
    utc_now,
)
from swarm.inference import InferenceClient, InferenceError, chat, new_request_id
from swarm.payloads import Payloads, is_ref, read_object
from swarm.repetition import degeneracy

__all__ = ["StepExecutor", "StepFailed", "build_prompt", "memory_section", "steps_consumer"]

log = logging.getLogger(__name__)


ENDED_RUNS_KEPT = 10_000
_ENDED_RUN_EVENT: TypeAdapter[RunCancelled | RunFailed] = TypeAdapter(RunCancelled | RunFailed)
MIN_INPUT_CHARS = 200  # the least of each dependency's output a prompt shows
MAX_TEMPERATURE = 1.5
MEMORY_OUTPUT_CHARS = 4000  # of a turn's output, what its memory entry keeps
MEMORY_TOOL_CHARS = 500  # of a tool call's request and result
SUMMARY_PROMPT = (
    "Rewrite the summary of your work so far to include your latest turn. Keep facts, decisions and open "
    "questions; at most {chars} characters.\n\nSummary so far:\n{summary}\n\nLatest turn:\n{turn}"
)


def steps_consumer(settings: WorkerSettings) -> ConsumerSpec:
    """The pool's shared durable consumer: every worker of the pool pulls from it."""
    return ConsumerSpec(
        stream=STEPS,
        durable=f"{WORKERS_CONSUMER_PREFIX}-{settings.pool}",
        filter_subjects=(Subjects.steps(settings.pool),),
        ack_wait_s=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
    )


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def unusable_text(text: str) -> str | None:
    """Why a model's free-text output cannot be used (empty, or garbage from a broken decoder), or None."""
    if not text.strip():
        return "an empty output"
    if _CONTROL_CHARS.search(text):
        return "garbage (control characters or undecodable bytes)"
    return None


def sample_seed(dispatch: StepDispatch, sample: int) -> int:
    """The seed of one sample of one attempt: reproducible for a run, different for every resample and attempt."""
    return zlib.crc32(f"{dispatch.run_id}.{dispatch.step.id}.{dispatch.attempt}.{sample}".encode())


def sample_temperature(base: float, sample: int, step: float) -> float:
    """A resample is drawn hotter than the one before, so it leaves the loop the last one fell into."""
    return min(MAX_TEMPERATURE, base + sample * step)


def sim_fault(dispatch: StepDispatch) -> Literal["error", "garbage"] | None:
    """The fault a load test planted in a step, injected into its first attempt only (sim backend)."""
    if dispatch.attempt > 1 or dispatch.step.sim_fault is None:
        return None
    return "error" if dispatch.step.sim_fault == "fail_once" else "garbage"


def _turn_text(turn: MemoryTurn) -> str:
    lines = [f"[{turn.step_id}] Instruction: {turn.instruction}"]
    lines += [f"  Tool call ({call.tool}): {call.request}\n  Result: {call.result}" for call in turn.tool_calls]
    lines.append(f"  Output: {turn.output}")
    return "\n".join(lines)


def memory_section(policy: MemoryPolicy, turns: list[MemoryTurn], omitted: int) -> list[str]:
    """The prompt's memory: the seed its parent gave the agent, then its earlier turns within the budget,
    newest kept first; it says what it left out and why."""
    parts: list[str] = []
    if policy.seed:
        parts.append(f"Memory you were given when you were created:\n{policy.seed}")
    if policy.mode is MemoryMode.NONE or not (turns or omitted):
        return parts
    budget = policy.max_chars
    if policy.mode is MemoryMode.SUMMARY and turns and turns[-1].summary:
        summary = turns[-1].summary[: budget // 2]
        parts.append(f"Summary of your earlier turns (written by you):\n{summary}")
        budget -= len(summary)
    shown: list[str] = []
    for turn in reversed(turns):
        text = _turn_text(turn)
        if len(text) > budget:
            if not shown and budget >= MIN_INPUT_CHARS:  # the latest turn, cut, rather than nothing
                shown.append(text[:budget] + " [cut: memory budget]")
            break
        shown.append(text)
        budget -= len(text)
    if shown:
        parts.append("Your earlier turns (oldest first):\n" + "\n".join(reversed(shown)))
    left_out = omitted + len(turns) - len(shown)
    if left_out:
        why = {
            MemoryMode.LAST_TURNS: f"you see your last {policy.max_turns} turns within {policy.max_chars} characters",
            MemoryMode.SUMMARY: "they are in the summary above",
        }[policy.mode]
        parts.append(f"({left_out} earlier turns left out of your memory: {why})")
    return parts


def build_prompt(
    dispatch: StepDispatch, inputs: dict[str, str], context_chars: int, memory: list[MemoryTurn] | None = None
) -> tuple[str, str]:
    """The system and user messages of a step: the agent's identity, its memory, the goal, its inputs, its
    instruction."""
    agent, step = dispatch.agent, dispatch.step
    system = agent.instructions or f"You are a {agent.role}. Answer concisely and factually."
    parts = [f"Overall goal: {dispatch.goal}"]
    parts += memory_section(agent.memory, memory or [], dispatch.memory_omitted)
    if inputs:
        # An equal share of the budget each, but never a useless sliver: a wide fan-in keeps the
        # first inputs whole enough to read and says how many it left out.
        share = max(MIN_INPUT_CHARS, context_chars // len(inputs))
        parts.append("Inputs from earlier steps:")
        used = shown = 0
        for step_id, text in inputs.items():
            piece = text[:share]
            if shown and used + len(piece) > context_chars:
                break
            parts.append(f"[{step_id}] {piece}")
            used, shown = used + len(piece), shown + 1
        if shown < len(inputs):
            parts.append(f"({len(inputs) - shown} more inputs left out: the prompt's budget for inputs is spent)")
    if dispatch.missing_inputs:
        parts.append(f"(Inputs missing because those steps failed: {', '.join(dispatch.missing_inputs)})")
    parts.append(f"Your task: {step.instruction}")
    return system, "\n\n".join(parts)


def tool_calls_of(conversation: tuple[ChatMessage, ...]) -> tuple[MemoryToolCall, ...]:
    """The tool calls of a tool loop's conversation (a decision, then its result), for the turn's memory."""
    calls = []
    for decision, result in itertools.pairwise(conversation):
        if decision.role == "assistant" and result.role == "user" and result.content.startswith(RESULT_PREFIX):
            tool = result.content[len(RESULT_PREFIX) :].split(" (call", 1)[0]
            text = result.content.split("\n", 1)[1] if "\n" in result.content else ""
            calls.append(
                MemoryToolCall(tool=tool, request=decision.content[:MEMORY_TOOL_CHARS], result=text[:MEMORY_TOOL_CHARS])
            )
    return tuple(calls)


class StepExecutor:
    """Runs steps for one worker process; holds no run state of its own."""

    def __init__(self, bus: Bus, settings: WorkerSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.inference = InferenceClient(bus.nc, bus.wait_reconnected)
        self.results = ResultSender(bus)
        self.tools = ToolRegistry.for_worker(settings)
        self._payloads: dict[tuple[str, str], Payloads] = {}  # (bucket, tenant): keeps its object store handle
        self._ended_runs: dict[str, None] = {}  # insertion-ordered set, bounded: checked on every step
        self.steps_done = 0
        self._events: dict[tuple[str, str, int], list[StepEvent]] = {}  # per attempt, until flushed
        self._running: dict[tuple[str, str, int], tuple[float, Msg, StepDispatch]] = {}  # since, delivery, step
        self._attempt_tasks: dict[tuple[str, str, int], asyncio.Task[Any]] = {}  # what a run's end cancels
        self._interrupted: set[tuple[str, str, int]] = set()  # attempts cancelled because their run ended
        self.interrupted_count = 0
        self._confirming: set[asyncio.Task[None]] = set()

    def payloads(self, tenant: str, bucket: BucketSpec = OUTPUTS_BUCKET) -> Payloads:
        """Values of `bucket` for `tenant`'s runs, large ones in the tenant's payload store (see WorkerSettings)."""
        key = (bucket.name, tenant)
        if key not in self._payloads:
            self._payloads[key] = Payloads(
                self.bus, inline_limit=self.settings.inline_payload_bytes, bucket=bucket,
                store=self.settings.payloads_store(tenant),
            )  # fmt: skip
        return self._payloads[key]

    def health(self) -> dict[str, int]:
        """What the health probe reports: steps done, running now, and the slots to run them."""
        return {
            "steps_done": self.steps_done, "running": len(self._running), "concurrency": self.settings.concurrency,
            "interrupted_count": self.interrupted_count,
        }  # fmt: skip

    async def watch_ended_runs(self) -> None:
        """Skip the queued steps of runs that were cancelled or failed meanwhile, and interrupt their running ones.

        An end is believed only when the message is a well-formed RunCancelled/RunFailed on its own
        run's subject, and the run's checkpoint (written by the dispatcher alone) confirms it: a
        forged `{"run_id": ...}` cannot make workers drop a live run's steps.
        """

        async def on_end(msg: Msg) -> None:
            try:
                event = _ENDED_RUN_EVENT.validate_json(msg.data)
            except ValidationError as exc:
                log.warning("malformed run end on %s ignored: %s", msg.subject, str(exc)[:300])
                return
            if msg.subject != Subjects.run_event(event.tenant, event.run_id, event.kind):
                log.warning("run end for %s/%s on %s ignored", event.tenant, event.run_id, msg.subject)
                return
            if event.run_id not in self._ended_runs:
                task = asyncio.create_task(self._confirm_ended(event.run_id))
                self._confirming.add(task)
                task.add_done_callback(self._confirming.discard)

        for kind in (RunEventKind.CANCELLED, RunEventKind.FAILED):
            if not self.settings.tenants:
                await self.bus.nc.subscribe(Subjects.run_kind_all(kind), cb=on_end)
            for tenant in self.settings.tenants:  # a dedicated pool: only its tenants' runs (all it may read)
                await self.bus.nc.subscribe(Subjects.run_event(tenant, "*", kind), cb=on_end)

    async def _confirm_ended(self, run_id: str) -> None:
        """Mark the run ended once its checkpoint says so (the dispatcher writes it just after the event)."""
        kv = await self.bus.kv(RUN_STATE_BUCKET)
        for delay_s in (0.0, 0.2, 0.5, 1.0, 2.0, 4.0):
            await asyncio.sleep(delay_s)
            try:
                entry = await kv.get(Keys.run_checkpoint(run_id))
            except KeyNotFoundError:
                continue
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot confirm the end of run %s: %s", run_id, exc)
                continue
            if json.loads(entry.value or b"{}").get("phase", "running") != "running":
                self._ended_runs[run_id] = None
                if len(self._ended_runs) > ENDED_RUNS_KEPT:
                    del self._ended_runs[next(iter(self._ended_runs))]
                self._interrupt(run_id)
                return
        log.warning("run %s announced as ended, but its checkpoint says it runs: ignored", run_id)

    def _interrupt(self, run_id: str) -> None:
        """Cancel the running attempts of an ended run: their model calls are aborted, their results dropped."""
        for key, task in list(self._attempt_tasks.items()):
            if key[0] == run_id and key not in self._interrupted:
                self._interrupted.add(key)
                self.interrupted_count += 1
                task.cancel()

    async def on_step(self, msg: Msg) -> None:
        """Handle one delivery of a step (settled by `swarm.bus.settle`)."""
        dispatch = StepDispatch.model_validate_json(msg.data)
        if dispatch.run_id in self._ended_runs:
            return
        if self.settings.tenants and dispatch.tenant not in self.settings.tenants:
            # Its NATS user could not store this tenant's output anyway: fail it plainly, not by a denied write.
            error = f"worker pool {self.settings.pool} serves tenants {', '.join(self.settings.tenants)}, not {dispatch.tenant}"
            await self.results.send(dispatch.tenant, StepResult(
                run_id=dispatch.run_id, step_id=dispatch.step.id, attempt=dispatch.attempt, started_at=utc_now(),
                worker_id=self.worker_id, status=StepStatus.FAILED, error=error, retryable=False, finished_at=utc_now(),
            ))  # fmt: skip
            return
        if dispatch.not_before is not None:
            wait_s = (dispatch.not_before - utc_now()).total_seconds()
            if wait_s > 0.01:
                raise Retry("backoff", delay_s=wait_s)
        started_at = utc_now()
        await self._event(dispatch, StepEventKind.STARTED, at=started_at)
        key = self._attempt_key(dispatch)
        self._running[key] = (asyncio.get_running_loop().time(), msg, dispatch)
        task = asyncio.current_task()
        assert task is not None
        self._attempt_tasks[key] = task
        try:
            result, unstored = await self._attempt(dispatch, started_at)
        except asyncio.CancelledError:
            if key not in self._interrupted:
                raise  # the worker is stopping
            task.uncancel()  # the run ended: this attempt's work is dropped, its delivery acked
            await self._flush_events(dispatch)  # what it did before (started, model calls) is still true
            return
        finally:
            self._running.pop(key, None)
            self._attempt_tasks.pop(key, None)
            self._interrupted.discard(key)
        if dispatch.run_id in self._ended_runs:  # ended while it ran, between two awaits: dropped too
            await self._flush_events(dispatch)
            return
        events = self._events.get(key, [])
        if len(events) <= RESULT_EVENTS_MAX:  # the usual case: they ride with the result
            result = result.model_copy(update={"events": tuple(events)})
            self._events.pop(key, None)
        else:
            await self._flush_events(dispatch)
        if unstored is not None:
            # Stored before the result is sent: whoever the result wakes (a dependent's retry, the
            # aggregator reading the sinks) finds it. Two streams do not keep each other's order.
            await self.bus.publish_bytes(self.payloads(dispatch.tenant).kv_subject(Keys.output(dispatch.tenant, dispatch.run_id, dispatch.step.id)), unstored)
        await self.results.send(dispatch.tenant, result)
        self.steps_done += 1

    async def _attempt(self, dispatch: StepDispatch, started_at: datetime) -> tuple[StepResult, bytes | None]:
        """The attempt's result, and its output when it is small enough for the bucket itself (the caller
        stores it); a larger one is already in the object store, by reference."""
        step = dispatch.step
        fields = {
            "run_id": dispatch.run_id, "step_id": step.id, "attempt": dispatch.attempt,
            "started_at": started_at, "worker_id": self.worker_id,
        }  # fmt: skip
        try:
            async with asyncio.timeout(step.timeout_s):
                memory = await self._memory(dispatch)
                output, prompt_tokens, completion_tokens, spawn, calls = await self._run(dispatch, memory)
                # Committed before the result: the turn that follows, whoever runs it, finds it. An attempt
                # killed after this line wrote an entry the dispatcher never names (see RunState.memory_of).
                summary_tokens = await self._commit_memory(dispatch, memory, output, calls)
                prompt_tokens, completion_tokens = prompt_tokens + summary_tokens[0], completion_tokens + summary_tokens[1]
        except TimeoutError:
            error = f"step timed out after {step.timeout_s:.0f}s"
            return StepResult(status=StepStatus.FAILED, error=error, finished_at=utc_now(), **fields), None
        except (InferenceError, StepFailed) as exc:
            retryable = not isinstance(exc, StepFailed) or exc.retryable
            return StepResult(
                status=StepStatus.FAILED, error=cut(str(exc), ERROR_MAX_CHARS), retryable=retryable, finished_at=utc_now(), **fields
            ), None
        key = Keys.output(dispatch.tenant, dispatch.run_id, step.id)
        data: bytes | None = output.encode()
        if not self.payloads(dispatch.tenant).fits_inline(data):
            await self.payloads(dispatch.tenant).put(key, data)  # by reference, through the object store
            data = None
        return StepResult(
            status=StepStatus.SUCCEEDED, output_key=key, output_preview=output[:400],
            output=output if len(output) <= INLINE_OUTPUT_MAX_CHARS else None,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finished_at=utc_now(), spawn=spawn,
            **fields,
        ), data  # fmt: skip

    async def _memory(self, dispatch: StepDispatch) -> list[MemoryTurn]:
        """The committed earlier turns the dispatch names, oldest first."""
        if not dispatch.memory:
            return []
        store = self.payloads(dispatch.tenant, MEMORY_BUCKET)

        async def load(step_id: str, attempt: int) -> MemoryTurn:
            data = await store.get(Keys.memory_turn(dispatch.tenant, dispatch.run_id, dispatch.agent.id, step_id, attempt))
            if data is None:
                raise StepFailed(f"memory of turn {step_id} (attempt {attempt}) not found", retryable=True)
            return MemoryTurn.model_validate_json(data)

        return list(await asyncio.gather(*(load(ref.step_id, ref.attempt) for ref in dispatch.memory)))

    async def _commit_memory(
        self, dispatch: StepDispatch, memory: list[MemoryTurn], output: str, calls: tuple[MemoryToolCall, ...]
    ) -> tuple[int, int]:
        """Write this attempt's memory entry (with the rolling summary in summary mode); the tokens it took."""
        policy = dispatch.agent.memory
        if policy.mode is MemoryMode.NONE:
            return 0, 0
        step = dispatch.step
        turn = MemoryTurn(
            step_id=step.id, attempt=dispatch.attempt, instruction=step.instruction,
            output=output[:MEMORY_OUTPUT_CHARS], tool_calls=calls,
        )  # fmt: skip
        tokens = (0, 0)
        if policy.mode is MemoryMode.SUMMARY:
            previous = memory[-1].summary if memory else ""
            if memory and not previous:  # the first summary also takes in the turn before it
                previous = _turn_text(memory[-1])
            prompt = SUMMARY_PROMPT.format(chars=policy.max_chars // 2, summary=previous or "(none)", turn=_turn_text(turn))
            request = InferenceRequest(
                request_id=new_request_id(), messages=chat(f"You are a {dispatch.agent.role}.", prompt),
                max_tokens=max(32, policy.max_chars // 8), seed=sample_seed(dispatch, 99), run_id=dispatch.run_id,
                step_id=step.id, caller="worker", sim_latency_ms=step.sim_latency_ms,
            )  # fmt: skip
            response = await self.inference.complete(request, timeout_s=step.timeout_s)
            if not response.ok:
                raise StepFailed(f"inference failed writing the memory summary: {response.error}", retryable=True)
            turn = turn.model_copy(update={"summary": response.content[: policy.max_chars // 2]})
            tokens = (response.prompt_tokens, response.completion_tokens)
        key = Keys.memory_turn(dispatch.tenant, dispatch.run_id, dispatch.agent.id, step.id, dispatch.attempt)
        await self.payloads(dispatch.tenant, MEMORY_BUCKET).put(key, turn.model_dump_json().encode())
        return tokens

    async def _run(
        self, dispatch: StepDispatch, memory: list[MemoryTurn]
    ) -> tuple[str, int, int, SpawnRequest | None, tuple[MemoryToolCall, ...]]:
        if dispatch.step.tools or dispatch.step.output_schema is not None:
            return await self._run_structured(dispatch, memory)
        inputs = await self._inputs(dispatch)
        system, user = build_prompt(dispatch, inputs, self.settings.context_chars, memory)
        prompt_tokens = completion_tokens = 0
        problem = ""
        samples = 1 + self.settings.resample_max
        base = InferenceRequest.model_fields["temperature"].default
        for sample in range(samples):
            request = InferenceRequest(
                request_id=new_request_id(), messages=chat(system, user), max_tokens=dispatch.step.max_tokens,
                temperature=sample_temperature(base, sample, self.settings.resample_temperature_step),
                seed=sample_seed(dispatch, sample), run_id=dispatch.run_id, step_id=dispatch.step.id,
                caller="worker", sim_latency_ms=dispatch.step.sim_latency_ms, sim_fault=sim_fault(dispatch),
                sim_echo=dispatch.step.sim_echo,
            )  # fmt: skip
            response = await self.inference.complete(request, timeout_s=dispatch.step.timeout_s)
            if not response.ok:
                raise StepFailed(f"inference failed: {response.error}", retryable=True)
            prompt_tokens += response.prompt_tokens
            completion_tokens += response.completion_tokens
            # A sim echo is a copy of the prompt by design (tests read it back): not a degenerate answer.
            looping = None if dispatch.step.sim_echo else degeneracy(response.content)
            problem = unusable_text(response.content) or looping or ""
            # A rejected sample says why in its event, with what the next one is drawn with.
            rejected = {"outcome": "rejected", "temperature": f"{request.temperature:g}", "seed": str(request.seed)}
            await self._event(
                dispatch, StepEventKind.INFERENCE_DONE, seq=sample + 1,
                duration_ms=response.queue_ms + response.duration_ms, prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens, error=f"the model returned {problem}" if problem else "",
                attributes=rejected if problem else {},
            )  # fmt: skip
            if not problem:
                return response.content, prompt_tokens, completion_tokens, None, ()
        raise StepFailed(f"the model returned {problem} ({samples} samples)", retryable=True)

    async def _run_structured(
        self, dispatch: StepDispatch, memory: list[MemoryTurn]
    ) -> tuple[str, int, int, SpawnRequest | None, tuple[MemoryToolCall, ...]]:
        """A step with tools and/or an output schema: a conversation of several model calls."""
        step = dispatch.step
        try:
            tools = self.tools.resolve(step.tools)
        except UnknownTool as exc:
            raise StepFailed(str(exc), retryable=False) from exc
        if step.output_schema is not None:
            validator_for(step.output_schema)  # an invalid schema fails before any inference is spent
        inputs = await self._inputs(dispatch)
        system, user = build_prompt(dispatch, inputs, self.settings.context_chars, memory)
        messages = chat(system, user)
        usage = [0, 0, 0]  # calls, prompt tokens, completion tokens
        script = list(step.sim_tool_calls)  # the sim's scripted tool calls not yet made

        async def model(conversation: tuple[ChatMessage, ...], schema: dict[str, Any] | None) -> ModelReply:
            decision = schema is not None and "action" in schema.get("properties", {})
            tool_call = None
            if decision and script and "tool" in (schema or {}).get("properties", {}):
                tool_call = await self._sim_arguments(dispatch, script.pop(0))
            request = InferenceRequest(
                request_id=new_request_id(), messages=conversation, max_tokens=step.max_tokens, json_schema=schema,
                seed=sample_seed(dispatch, usage[0]), run_id=dispatch.run_id, step_id=step.id, caller="worker",
                sim_latency_ms=step.sim_latency_ms, sim_fault=sim_fault(dispatch), sim_echo=step.sim_echo,
                sim_tool_call=tool_call, sim_final=bool(step.sim_tool_calls) and decision and tool_call is None,
            )  # fmt: skip
            response = await self.inference.complete(request, timeout_s=step.timeout_s)
            if not response.ok:
                raise StepFailed(f"inference failed: {response.error}", retryable=True)
            usage[0] += 1
            usage[1] += response.prompt_tokens
            usage[2] += response.completion_tokens
            await self._event(
                dispatch, StepEventKind.INFERENCE_DONE, seq=usage[0], duration_ms=response.queue_ms + response.duration_ms,
                prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
            )  # fmt: skip
            return ModelReply(response.content, response.prompt_tokens, response.completion_tokens)

        async def on_tool_call(call: ToolCall) -> None:
            await self._event(
                dispatch, StepEventKind.TOOL_CALL, seq=call.index, duration_ms=call.duration_ms, error=call.error,
                attributes={"tool": call.tool, "outcome": "ok" if call.ok else "error", "call": str(call.index)},
            )  # fmt: skip

        ctx = ToolContext(
            run_id=dispatch.run_id, tenant=dispatch.tenant, step_id=step.id, agent_id=dispatch.agent.id,
            attempt=dispatch.attempt, settings=self.settings, bus=self.bus, spawn_budget=dispatch.spawn_budget,
        )  # fmt: skip
        answer: str | None = None
        if tools:
            loop = ToolLoop(
                model, tools, ctx, max_rounds=self.settings.max_tool_rounds,
                tool_timeout_s=self.settings.tool_timeout_s, result_chars=self.settings.tool_result_chars,
                answer_max_chars=min(self.settings.answer_max_chars, max(100, step.max_tokens * 4)),
                on_tool_call=on_tool_call,
            )  # fmt: skip
            answer, messages = await loop.run(messages)
        if step.output_schema is not None:
            # The tool loop's answer must satisfy the schema too; when it does not, it is repaired.
            if answer is not None:
                messages = (*messages, ChatMessage(role="user", content="Give your final output as JSON."))
            answer = await structured_output(model, messages, step.output_schema, first=answer)
        assert answer is not None
        return answer, usage[1], usage[2], ctx.spawned(), tool_calls_of(messages)

    async def _sim_arguments(self, dispatch: StepDispatch, call: SimToolCall) -> SimToolCall:
        """A scripted tool call with its arguments inline (read from the object store when by reference)."""
        if call.arguments_ref is None:
            return call
        try:
            stored = await read_object(self.bus.js, self.settings.payloads_store(dispatch.tenant).name, call.arguments_ref)
        except nats.js.errors.NotFoundError as exc:
            raise StepFailed(f"sim script {call.arguments_ref} not found", retryable=False) from exc
        return SimToolCall(tool=call.tool, arguments=json.loads(stored or b"{}"))

    async def _inputs(self, dispatch: StepDispatch) -> dict[str, str]:
        deps = [d for d in dispatch.step.depends_on if d not in dispatch.missing_inputs]
        by_key = [d for d in deps if d not in dispatch.inputs]  # the usual case: none, all came inline
        if not by_key:
            return {d: dispatch.inputs[d] for d in deps}
        kv = await self.bus.kv(OUTPUTS_BUCKET)

        async def fetch(step_id: str) -> str:
            try:
                entry = await kv.get(Keys.output(dispatch.tenant, dispatch.run_id, step_id))
            except KeyNotFoundError as exc:
                raise StepFailed(f"output of dependency {step_id} not found", retryable=True) from exc
            value = entry.value or b""
            return (await self.payloads(dispatch.tenant).resolve(value) if is_ref(value) else value).decode()

        fetched = dict(zip(by_key, await asyncio.gather(*(fetch(d) for d in by_key)), strict=True))
        return {d: dispatch.inputs[d] if d in dispatch.inputs else fetched[d] for d in deps}

    async def heartbeats(self) -> None:
        """Tell JetStream the running steps are still worked on, so they are not redelivered to another
        worker (a killed worker's steps are, after the short ack_wait); a step running long publishes its
        events so far, so watchers see it started.

        One loop for all steps: a task per step cost more than the steps themselves at zero latency. A step
        started less than half a heartbeat ago is skipped: its ack_wait runs from its delivery, and the next
        round reaches it within 1.5 heartbeats (ack_wait is 3), so most short agent turns cost no message.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            now = loop.time()
            for started, msg, dispatch in list(self._running.values()):
                if started > now - self.settings.heartbeat_s / 2:
                    continue
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
                    if started <= now - self.settings.early_events_s:
                        await self._flush_events(dispatch)

    async def _flush_events(self, dispatch: StepDispatch) -> None:
        """Publish the attempt's buffered events as one StepEventBatch (one message per step, not per event)."""
        events = self._events.pop(self._attempt_key(dispatch), None)
        if events:
            await self.bus.publish_nowait(Subjects.step_event_batch(dispatch.tenant, dispatch.run_id), StepEventBatch(events=tuple(events)))

    async def _event(
        self, dispatch: StepDispatch, kind: StepEventKind, seq: int | None = None, **fields: object
    ) -> None:
        """Buffer a step event (see `_flush_events`); `seq` numbers events of one kind within an attempt (tool calls, model calls)."""
        event_id = step_event_id(dispatch.run_id, dispatch.step.id, dispatch.attempt, kind)
        if seq is not None and (kind is StepEventKind.TOOL_CALL or seq > 1):
            event_id = f"{event_id}.{seq}"  # deterministic: a redelivered attempt repeats the same ids
        event = StepEvent(
            event_id=event_id,
            run_id=dispatch.run_id,
            tenant=dispatch.tenant,
            step_id=dispatch.step.id,
            agent_id=dispatch.agent.id,
            attempt=dispatch.attempt,
            kind=kind,
            worker_id=self.worker_id,
            **fields,
        )
        self._events.setdefault(self._attempt_key(dispatch), []).append(event)

    @staticmethod
    def _attempt_key(dispatch: StepDispatch) -> tuple[str, str, int]:
        return dispatch.run_id, dispatch.step.id, dispatch.attempt
