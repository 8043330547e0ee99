"""A worker's ResultSender on a real JetStream: results finishing together share messages, each arrives once."""

from __future__ import annotations

import asyncio

import pytest

from services.worker_pool.reporting import ResultSender
from swarm.bus import Bus
from swarm.contracts import RESULTS, StepResult, Subjects, results_of
from tests.unit.test_result_batches import result

pytestmark = pytest.mark.integration


async def test_results_finishing_together_share_messages_and_each_arrives_once(bus: Bus) -> None:
    sender = ResultSender(bus)
    sent = [result(f"s{i}", run_id=run_id) for run_id in ("run-a", "run-b") for i in range(40)]
    await asyncio.gather(*(sender.send("t", r) for r in sent))  # every send returns: its batch was acknowledged
    received: list[StepResult] = []
    messages = 0
    for run_id in ("run-a", "run-b"):
        psub = await bus.js.pull_subscribe(Subjects.result("t", run_id), durable=f"test-{run_id}", stream=RESULTS.name)
        while len([r for r in received if r.run_id == run_id]) < 40:
            for msg in await psub.fetch(100, timeout=5):
                assert msg.subject == Subjects.result("t", run_id)  # a batch holds one run's results
                received.extend(results_of(msg.data))
                messages += 1
                await msg.ack()
    assert sorted(received, key=lambda r: (r.run_id, int(r.step_id[1:]))) == sent
    assert messages < len(sent) // 4  # batched: the first of each run goes alone, the rest together
