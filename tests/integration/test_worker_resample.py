"""A degenerate model output fails validation in the real worker (real nats-server) and is sampled again.

A real model cannot be made to loop on demand, so a stand-in gateway on the real inference subject answers
from a script: loops first, then prose. What is checked is the worker's side: new seed, hotter sample,
the reason in the step events, a bounded number of samples.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from services.worker_pool.__main__ import main as worker_main
from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus
from swarm.contracts import (
    GATEWAY_QUEUE_GROUP,
    RESULTS,
    AgentSpec,
    InferenceRequest,
    InferenceResponse,
    StepDispatch,
    StepEventKind,
    StepResult,
    StepSpec,
    StepStatus,
    Subjects,
    results_of,
)
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

LOOP = "2020-2022: " * 40
PROSE = "Norway makes nearly all of its power from hydro dams, while Spain leads in solar farms."


@pytest.fixture
async def scripted_gateway(bus: Bus) -> AsyncIterator[tuple[list[InferenceRequest], list[str]]]:
    """(requests seen, replies to give in order; the last one repeats)."""
    requests: list[InferenceRequest] = []
    replies: list[str] = []

    async def on_request(msg: Msg) -> None:
        request = InferenceRequest.model_validate_json(msg.data)
        requests.append(request)
        content = replies[min(len(requests), len(replies)) - 1]
        response = InferenceResponse(
            request_id=request.request_id, ok=True, content=content, prompt_tokens=10, completion_tokens=20
        )
        await msg.respond(response.model_dump_json().encode())

    sub = await bus.nc.subscribe(Subjects.INFER, queue=GATEWAY_QUEUE_GROUP, cb=on_request)
    yield requests, replies
    await sub.unsubscribe()


async def run_one_step(bus: Bus, nats_settings: NatsSettings, run_id: str) -> StepResult:
    stop = asyncio.Event()
    worker = asyncio.create_task(worker_main(stop, WorkerSettings(nats=nats_settings, resample_max=2)))
    psub = await bus.js.pull_subscribe(Subjects.result("t", run_id), durable=f"test-{run_id}", stream=RESULTS.name)
    step = StepSpec(id="s1", agent_id="a1", instruction="Compare the power sources.")
    dispatch = StepDispatch(
        run_id=run_id, tenant="t", goal="energy", agent=AgentSpec(id="a1", role="analyst"), step=step, attempt=1
    )
    await bus.publish(Subjects.steps("default"), dispatch)
    try:
        msg = (await psub.fetch(1, timeout=30))[0]
        await msg.ack()
        (result,) = results_of(msg.data)
        return result
    finally:
        stop.set()
        await asyncio.wait_for(worker, 20)


async def test_a_loop_is_sampled_again_with_a_new_seed_and_hotter(
    bus: Bus, nats_settings: NatsSettings, scripted_gateway: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, replies = scripted_gateway
    replies += [LOOP, "", PROSE]
    result = await run_one_step(bus, nats_settings, "run-resample")
    assert result.status is StepStatus.SUCCEEDED and result.output == PROSE
    assert len(requests) == 3
    assert len({r.seed for r in requests}) == 3 and None not in {r.seed for r in requests}
    temperatures = [r.temperature for r in requests]
    assert temperatures == sorted(temperatures) and temperatures[0] < temperatures[-1]
    assert (result.prompt_tokens, result.completion_tokens) == (30, 60)  # every sample is paid for
    calls = [e for e in result.events if e.kind is StepEventKind.INFERENCE_DONE]
    assert len(calls) == 3 and len({e.event_id for e in calls}) == 3
    assert "a loop" in calls[0].error and "empty" in calls[1].error and calls[2].error == ""
    assert calls[0].attributes["outcome"] == "rejected" and calls[0].attributes["seed"] == str(requests[0].seed)


async def test_samples_are_bounded_and_the_reason_fails_the_attempt_retryably(
    bus: Bus, nats_settings: NatsSettings, scripted_gateway: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, replies = scripted_gateway
    replies.append(LOOP)
    result = await run_one_step(bus, nats_settings, "run-loops")
    assert len(requests) == 3  # one sample and resample_max=2 more
    assert result.status is StepStatus.FAILED and result.retryable
    assert result.error is not None and "a loop" in result.error and "3 samples" in result.error
