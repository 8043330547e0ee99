"""Executing one agent step: context from dependencies, one inference call, output stored, result reported."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import deque
from datetime import datetime

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus, ConsumerSpec, Retry
from swarm.contracts import (
    OUTPUTS_BUCKET,
    STEPS,
    WORKERS_CONSUMER_PREFIX,
    InferenceRequest,
    StepDispatch,
    StepEvent,
    StepEventKind,
    StepResult,
    StepStatus,
    Subjects,
    step_event_id,
    utc_now,
)
from swarm.inference import InferenceClient, InferenceError, chat, new_request_id

log = logging.getLogger(__name__)


def steps_consumer(settings: WorkerSettings) -> ConsumerSpec:
    """The pool's shared durable consumer: every worker of the pool pulls from it."""
    return ConsumerSpec(
        stream=STEPS,
        durable=f"{WORKERS_CONSUMER_PREFIX}-{settings.pool}",
        filter_subjects=(Subjects.steps(settings.pool),),
        ack_wait_s=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
    )


def output_key(run_id: str, step_id: str) -> str:
    """Where a step's output lives in the outputs bucket."""
    return f"{run_id}.{step_id}"


def build_prompt(dispatch: StepDispatch, inputs: dict[str, str], context_chars: int) -> tuple[str, str]:
    """The system and user messages of a step: the agent's identity, the goal, its inputs, its instruction."""
    agent, step = dispatch.agent, dispatch.step
    system = agent.instructions or f"You are a {agent.role}. Answer concisely and factually."
    parts = [f"Overall goal: {dispatch.goal}"]
    if inputs:
        share = max(200, context_chars // len(inputs))
        parts.append("Inputs from earlier steps:")
        parts.extend(f"[{step_id}] {text[:share]}" for step_id, text in inputs.items())
    if dispatch.missing_inputs:
        parts.append(f"(Inputs missing because those steps failed: {', '.join(dispatch.missing_inputs)})")
    parts.append(f"Your task: {step.instruction}")
    return system, "\n\n".join(parts)


class StepExecutor:
    """Runs steps for one worker process; holds no run state of its own."""

    def __init__(self, bus: Bus, settings: WorkerSettings) -> None:
        self.bus = bus
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.inference = InferenceClient(bus.nc)
        self._ended_runs: deque[str] = deque(maxlen=10_000)
        self.steps_done = 0

    async def watch_ended_runs(self) -> None:
        """Skip the queued steps of runs that were cancelled or failed meanwhile."""

        async def on_end(msg: Msg) -> None:
            with contextlib.suppress(ValueError, AttributeError):
                self._ended_runs.append(json.loads(msg.data).get("run_id"))

        for kind in ("cancelled", "failed"):
            await self.bus.nc.subscribe(Subjects.run_kind_all(kind), cb=on_end)

    async def on_step(self, msg: Msg) -> None:
        """Handle one delivery of a step (settled by `swarm.bus.settle`)."""
        dispatch = StepDispatch.model_validate_json(msg.data)
        if dispatch.run_id in self._ended_runs:
            return
        if dispatch.not_before is not None:
            wait_s = (dispatch.not_before - utc_now()).total_seconds()
            if wait_s > 0.01:
                raise Retry("backoff", delay_s=wait_s)
        started_at = utc_now()
        await self._event(dispatch, StepEventKind.STARTED, at=started_at)
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            result = await self._attempt(dispatch, started_at)
        finally:
            heartbeat.cancel()
        await self.bus.publish(Subjects.result(dispatch.run_id), result)
        self.steps_done += 1

    async def _attempt(self, dispatch: StepDispatch, started_at: datetime) -> StepResult:
        step = dispatch.step
        fields = {
            "run_id": dispatch.run_id, "step_id": step.id, "attempt": dispatch.attempt,
            "started_at": started_at, "worker_id": self.worker_id,
        }  # fmt: skip
        try:
            async with asyncio.timeout(step.timeout_s):
                output, prompt_tokens, completion_tokens = await self._run(dispatch)
        except TimeoutError:
            error = f"step timed out after {step.timeout_s:.0f}s"
            return StepResult(status=StepStatus.FAILED, error=error, finished_at=utc_now(), **fields)
        except (InferenceError, StepFailed) as exc:
            retryable = not isinstance(exc, StepFailed) or exc.retryable
            return StepResult(
                status=StepStatus.FAILED, error=str(exc)[:4000], retryable=retryable, finished_at=utc_now(), **fields
            )
        key = output_key(dispatch.run_id, step.id)
        kv = await self.bus.kv(OUTPUTS_BUCKET)
        await kv.put(key, output.encode())
        return StepResult(
            status=StepStatus.SUCCEEDED, output_key=key, output_preview=output[:400],
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finished_at=utc_now(), **fields,
        )  # fmt: skip

    async def _run(self, dispatch: StepDispatch) -> tuple[str, int, int]:
        inputs = await self._inputs(dispatch)
        system, user = build_prompt(dispatch, inputs, self.settings.context_chars)
        request = InferenceRequest(
            request_id=new_request_id(),
            messages=chat(system, user),
            max_tokens=dispatch.step.max_tokens,
            run_id=dispatch.run_id,
            step_id=dispatch.step.id,
            caller="worker",
            sim_latency_ms=dispatch.step.sim_latency_ms,
        )
        response = await self.inference.complete(request, timeout_s=dispatch.step.timeout_s)
        if not response.ok:
            raise StepFailed(f"inference failed: {response.error}", retryable=True)
        await self._event(
            dispatch, StepEventKind.INFERENCE_DONE, duration_ms=response.queue_ms + response.duration_ms,
            prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
        )  # fmt: skip
        if not response.content.strip():
            raise StepFailed("the model returned an empty output", retryable=True)
        return response.content, response.prompt_tokens, response.completion_tokens

    async def _inputs(self, dispatch: StepDispatch) -> dict[str, str]:
        deps = [d for d in dispatch.step.depends_on if d not in dispatch.missing_inputs]
        if not deps:
            return {}
        kv = await self.bus.kv(OUTPUTS_BUCKET)

        async def fetch(step_id: str) -> str:
            try:
                entry = await kv.get(output_key(dispatch.run_id, step_id))
            except KeyNotFoundError as exc:
                raise StepFailed(f"output of dependency {step_id} not found", retryable=True) from exc
            return (entry.value or b"").decode()

        texts = await asyncio.gather(*(fetch(d) for d in deps))
        return dict(zip(deps, texts, strict=True))

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell JetStream the step is still being worked on, so it is not redelivered to another worker."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _event(self, dispatch: StepDispatch, kind: StepEventKind, **fields: object) -> None:
        event = StepEvent(
            event_id=step_event_id(dispatch.run_id, dispatch.step.id, dispatch.attempt, kind),
            run_id=dispatch.run_id,
            tenant=dispatch.tenant,
            step_id=dispatch.step.id,
            agent_id=dispatch.agent.id,
            attempt=dispatch.attempt,
            kind=kind,
            worker_id=self.worker_id,
            **fields,  # type: ignore[arg-type]
        )
        await self.bus.publish_nowait(Subjects.step_event(dispatch.run_id), event, msg_id=event.event_id)


class StepFailed(Exception):
    """An attempt failed for a reason the dispatcher should know about."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable
