"""The worker's memory on a real nats-server with the sim gateway in-process: entries committed before the
result, read back by the refs a dispatch names, and the model-written rolling summary (no dispatcher)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus
from swarm.contracts import (
    MEMORY_BUCKET,
    RESULTS,
    AgentSpec,
    Keys,
    MemoryMode,
    MemoryPolicy,
    MemoryRef,
    MemoryTurn,
    StepDispatch,
    StepResult,
    StepSpec,
    StepStatus,
    Subjects,
    results_of,
)
from swarm.payloads import Payloads
from swarm.settings import NatsSettings
from tests.integration.test_worker_tools import output_of, worker_and_gateway

pytestmark = pytest.mark.integration

AGENT = AgentSpec(id="m1", role="analyst", memory=MemoryPolicy(mode=MemoryMode.SUMMARY, max_chars=2000))


async def run_turn(bus: Bus, psub: Any, step: StepSpec, memory: tuple[MemoryRef, ...], omitted: int) -> StepResult:
    run_id = "run-mem"
    dispatch = StepDispatch(run_id=run_id, tenant="t", goal="audit the ledger", agent=AGENT, step=step, attempt=1,
                            memory=memory, memory_omitted=omitted)  # fmt: skip
    await bus.publish(Subjects.steps("default"), dispatch)
    async with asyncio.timeout(60):
        while True:
            try:
                (msg,) = await psub.fetch(1, timeout=1)
            except TimeoutError:
                continue
            await msg.ack()
            for result in results_of(msg.data):
                if result.step_id == step.id:
                    return result


async def test_summary_memory_is_written_by_the_model_and_shown_to_the_next_turn(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    store = Payloads(bus, bucket=MEMORY_BUCKET)
    turns = [StepSpec(id=f"u{i}", agent_id="m1", instruction=f"check page {i}", sim_echo=i == 2) for i in range(3)]
    refs: list[MemoryRef] = []
    psub = await bus.js.pull_subscribe(Subjects.result("t", "run-mem"), durable="t-run-mem", stream=RESULTS.name)
    async with worker_and_gateway(bus, WorkerSettings(nats=nats_settings)):
        for i, turn in enumerate(turns):  # what the dispatcher names: the latest committed turn (summary mode)
            result = await run_turn(bus, psub, turn, tuple(refs[-1:]), max(0, len(refs) - 1))
            assert result.status is StepStatus.SUCCEEDED, result.error
            entry = MemoryTurn.model_validate_json(await store.get(Keys.memory_turn("t", "run-mem", "m1", turn.id, 1)) or b"")
            assert entry.instruction == f"check page {i}" and entry.summary  # committed before the result came
            refs.append(MemoryRef(step_id=turn.id, attempt=1))
        last = await output_of(bus, "run-mem", "u2")
    prompt = last.split("\nECHO>>", 1)[0]
    u1 = MemoryTurn.model_validate_json(await store.get(Keys.memory_turn("t", "run-mem", "m1", "u1", 1)) or b"")
    assert f"Summary of your earlier turns (written by you):\n{u1.summary}" in prompt
    assert "[u1] Instruction: check page 1" in prompt and "[u0]" not in prompt
    assert "(1 earlier turns left out of your memory: they are in the summary above)" in prompt
