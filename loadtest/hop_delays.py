"""Where a run's time goes between steps: `python -m loadtest.hop_delays --nats-url URL RUN_ID`.

Reads the run's step and inference events back from the EVENTS stream and prints p50 / p90 / mean (ms) of
each hop a step takes, from the events' own timestamps (each taken on its own host's clock):
- release: the last dependency's `succeeded` (dispatcher) to the step's `queued` (dispatcher);
- pickup: `queued` (dispatcher) to `started` (worker): STEPS stream, pull, the worker's loop;
- inference overhead: `started` to the first `inference_done` (worker), less the gateway's own queue and
  engine time: the request and reply in transit and waiting in either process's event loop;
- gateway queue: the gateway's `queue_ms` (admitted to started);
- report: the last `inference_done` (worker) to `succeeded` (dispatcher): output stored, result
  published, fetched and applied.
A step's makespan share is release + pickup + its attempt + report: at a 200 ms median a hop costing 4 ms
in all is the 0.98 efficiency budget of a chain.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections import defaultdict
from datetime import datetime

import nats.errors
from nats.js.api import DeliverPolicy

from swarm.client import SwarmClient
from swarm.contracts import (
    InferenceEvent,
    InferenceEventBatch,
    StepEvent,
    StepEventBatch,
    StepEventKind,
    Subjects,
)
from swarm.settings import NatsSettings

IDLE_S = 2.0  # the stream is read to its end: no message for this long


async def _read(client: SwarmClient, subject: str) -> list[bytes]:
    sub = await client.bus.js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    data = []
    try:
        while True:
            try:
                data.append((await sub.next_msg(timeout=IDLE_S)).data)
            except nats.errors.TimeoutError:
                return data
    finally:
        await sub.unsubscribe()


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def hops(step_events: list[StepEvent], inference_events: list[InferenceEvent]) -> dict[str, list[float]]:
    """Each hop's durations (ms) over the run's steps that succeeded at their first attempt."""
    by_step: dict[str, dict[str, list[StepEvent]]] = defaultdict(lambda: defaultdict(list))
    for event in step_events:
        if event.attempt == 1:
            by_step[event.step_id][event.kind.value].append(event)
    calls: dict[str, list[InferenceEvent]] = defaultdict(list)
    for call in inference_events:
        calls[call.step_id].append(call)
    found: dict[str, list[float]] = defaultdict(list)
    for step_id, kinds in by_step.items():
        needed = (StepEventKind.QUEUED, StepEventKind.STARTED, StepEventKind.INFERENCE_DONE, StepEventKind.SUCCEEDED)
        if not all(kinds.get(kind.value) for kind in needed):
            continue
        queued, started = kinds["queued"][0], kinds["started"][0]
        done = sorted(kinds["inference_done"], key=lambda e: e.at)
        succeeded = kinds["succeeded"][0]
        found["pickup"].append(_ms(queued.at, started.at))
        found["report"].append(_ms(done[-1].at, succeeded.at))
        first_call = min(calls.get(step_id, []), key=lambda c: c.at, default=None)
        if first_call is not None:
            found["gateway queue"].append(first_call.queue_ms)
            found["inference overhead"].append(
                _ms(started.at, done[0].at) - first_call.queue_ms - first_call.duration_ms
            )
        parents = [p for p in queued.attributes.get("depends_on", "").split(",") if p]
        ends = [by_step[p]["succeeded"][0].at for p in parents if by_step.get(p, {}).get("succeeded")]
        if ends and len(ends) == len(parents):
            found["release"].append(_ms(max(ends), queued.at))
    return found


async def measure(nats_url: str, run_id: str) -> dict[str, list[float]]:
    """Read the run's events from EVENTS and compute its hops."""
    client = await SwarmClient.connect(NatsSettings(url=nats_url))
    try:
        steps = [e for d in await _read(client, Subjects.step_event_batch("*", run_id))
                 for e in StepEventBatch.model_validate_json(d).events]  # fmt: skip
        calls = [e for d in await _read(client, Subjects.inference_event_batch())
                 for e in InferenceEventBatch.model_validate_json(d).events if e.run_id == run_id]  # fmt: skip
    finally:
        await client.close()
    return hops(steps, calls)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--nats-url", required=True)
    args = parser.parse_args()
    found = asyncio.run(measure(args.nats_url, args.run_id))
    for name in ("release", "pickup", "gateway queue", "inference overhead", "report"):
        values = sorted(found.get(name, []))
        if values:
            p90 = values[int(len(values) * 0.9)]
            print(f"{name:20s} p50 {statistics.median(values):7.1f}  p90 {p90:7.1f}  mean {statistics.mean(values):7.1f} ms")


if __name__ == "__main__":
    main()
