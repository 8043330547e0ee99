"""Where a run's time goes between steps: `python -m loadtest.hop_delays --nats-url URL RUN_ID`.

Reads the run's step and inference events back from the EVENTS stream and prints p50 / p90 / mean (ms) of
each hop a step takes, from the events' own timestamps (each taken on its own host's clock):
- release: the last dependency's `succeeded` (dispatcher) to the step's `queued` (dispatcher);
- pickup: `queued` (dispatcher) to `started` (worker): STEPS stream, pull, the worker's loop;
- inference overhead: `started` to the first `inference_done` (worker), less the gateway's own queue and
  engine time: the request and reply in transit and waiting in either process's event loop; split into
  'to the engine' (`started` to the gateway's engine starting the call: the worker's preparation, the
  request in transit, its admission) and 'from the engine' (the engine done to `inference_done`: the reply
  built, in transit, read and checked by the worker), which add up to it for a step of one model call;
- gateway queue: the gateway's `queue_ms` (admitted to started);
- report: the last `inference_done` (worker) to `succeeded` (dispatcher): output stored, result
  published, fetched and applied.
A step's makespan share is release + pickup + its attempt + report: at a 200 ms median a hop costing 4 ms
in all is the 0.98 efficiency budget of a chain.

It then follows the run's realized critical chain back from the step that succeeded last, each time to the
dependency that succeeded last, and sums each hop over that chain; with the run's start (its `planned` event
to the first `queued`: the dispatcher's intake of the plan) and end (the last `succeeded` to `executed`),
that is where the makespan beyond the engine's own time went.
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


_NEEDED = (StepEventKind.QUEUED, StepEventKind.STARTED, StepEventKind.INFERENCE_DONE, StepEventKind.SUCCEEDED)


def _first_attempts(step_events: list[StepEvent]) -> dict[str, dict[str, list[StepEvent]]]:
    """Step id -> event kind -> its first attempt's events of that kind, oldest first."""
    by_step: dict[str, dict[str, list[StepEvent]]] = defaultdict(lambda: defaultdict(list))
    for event in sorted(step_events, key=lambda e: e.at):
        if event.attempt == 1:
            by_step[event.step_id][event.kind.value].append(event)
    return by_step


def _complete(by_step: dict[str, dict[str, list[StepEvent]]]) -> dict[str, dict[str, list[StepEvent]]]:
    """The steps that have every hop's events: queued, started, inference done, succeeded."""
    return {s: kinds for s, kinds in by_step.items() if all(kinds.get(kind.value) for kind in _NEEDED)}


def _parents(kinds: dict[str, list[StepEvent]]) -> list[str]:
    """The step's dependencies, as its dispatcher's 'queued' event names them."""
    return [p for p in kinds["queued"][0].attributes.get("depends_on", "").split(",") if p]


def hops(step_events: list[StepEvent], inference_events: list[InferenceEvent]) -> dict[str, list[float]]:
    """Each hop's durations (ms) over the run's steps that succeeded at their first attempt."""
    by_step = _first_attempts(step_events)
    calls = _calls_by_step(inference_events)
    found: dict[str, list[float]] = defaultdict(list)
    for step_id, kinds in _complete(by_step).items():
        queued, started = kinds["queued"][0], kinds["started"][0]
        done = kinds["inference_done"]
        succeeded = kinds["succeeded"][0]
        found["pickup"].append(_ms(queued.at, started.at))
        found["report"].append(_ms(done[-1].at, succeeded.at))
        if step_id in calls:
            first_call = calls[step_id][0]
            found["gateway queue"].append(first_call.queue_ms)
            found["inference overhead"].append(
                _ms(started.at, done[0].at) - first_call.queue_ms - first_call.duration_ms
            )
            found["to the engine"].append(_to_engine(started.at, first_call))
            found["from the engine"].append(_ms(first_call.at, done[0].at))
        parents = _parents(kinds)
        ends = [by_step[p]["succeeded"][0].at for p in parents if by_step.get(p, {}).get("succeeded")]
        if ends and len(ends) == len(parents):
            found["release"].append(_ms(max(ends), queued.at))
    return found


def _calls_by_step(inference_events: list[InferenceEvent]) -> dict[str, list[InferenceEvent]]:
    """Step id -> its model calls, oldest first."""
    calls: dict[str, list[InferenceEvent]] = defaultdict(list)
    for call in sorted(inference_events, key=lambda c: c.at):
        calls[call.step_id].append(call)
    return calls


def _to_engine(started: datetime, call: InferenceEvent) -> float:
    """From a step's start to the engine starting its call (the call's end less its engine and queue time)."""
    return _ms(started, call.at) - call.duration_ms - call.queue_ms


def critical_chain(step_events: list[StepEvent], inference_events: list[InferenceEvent]) -> list[dict[str, float]]:
    """The hops (ms) of each step of the realized critical chain, first step first: from the step that
    succeeded last back through the dependency that succeeded last (first attempts' events)."""
    by_step = _complete(_first_attempts(step_events))
    calls = _calls_by_step(inference_events)

    def succeeded(step_id: str) -> datetime:
        return by_step[step_id]["succeeded"][0].at

    chain: list[dict[str, float]] = []
    step: str | None = max(by_step, key=succeeded, default=None)
    while step is not None:
        kinds = by_step[step]
        queued, started, last_done = kinds["queued"][0].at, kinds["started"][0].at, kinds["inference_done"][-1].at
        parent = max((p for p in _parents(kinds) if p in by_step), key=succeeded, default=None)
        own = calls.get(step, [])
        engine_ms, queue_ms = sum((c.duration_ms for c in own), 0.0), sum((c.queue_ms for c in own), 0.0)
        chain.append({
            "release": _ms(succeeded(parent), queued) if parent else 0.0,
            "pickup": _ms(queued, started),
            "inference overhead": _ms(started, last_done) - engine_ms - queue_ms,
            "gateway queue": queue_ms,
            "engine": engine_ms,
            "to the engine": _to_engine(started, own[0]) if own else 0.0,
            "from the engine": _ms(own[-1].at, last_done) if own else 0.0,
            "report": _ms(last_done, succeeded(step)),
        })  # fmt: skip
        step = parent
    return chain[::-1]


async def _run_events(client: SwarmClient, run_id: str) -> dict[str, datetime]:
    """When the RUNS stream stored each lifecycle event of the run (the first of each kind)."""
    sub = await client.bus.js.subscribe(Subjects.run_all("*", run_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    stored: dict[str, datetime] = {}
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=IDLE_S)
            except nats.errors.TimeoutError:
                return stored
            stored.setdefault(msg.subject.rsplit(".", 1)[-1], msg.metadata.timestamp)
    finally:
        await sub.unsubscribe()


async def measure(nats_url: str, run_id: str) -> tuple[list[StepEvent], list[InferenceEvent], dict[str, datetime]]:
    """Read the run's step and inference events from EVENTS, and its lifecycle from RUNS."""
    client = await SwarmClient.connect(NatsSettings(url=nats_url))
    try:
        steps = [e for d in await _read(client, Subjects.step_event_batch("*", run_id))
                 for e in StepEventBatch.model_validate_json(d).events]  # fmt: skip
        calls = [e for d in await _read(client, Subjects.inference_event_batch())
                 for e in InferenceEventBatch.model_validate_json(d).events if e.run_id == run_id]  # fmt: skip
        lifecycle = await _run_events(client, run_id)
    finally:
        await client.close()
    return steps, calls, lifecycle


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--nats-url", required=True)
    args = parser.parse_args()
    steps, calls, lifecycle = asyncio.run(measure(args.nats_url, args.run_id))
    found = hops(steps, calls)
    names = ("release", "pickup", "gateway queue", "inference overhead", "to the engine", "from the engine", "report")
    for name in names:
        values = sorted(found.get(name, []))
        if values:
            p90 = values[int(len(values) * 0.9)]
            print(f"{name:20s} p50 {statistics.median(values):7.1f}  p90 {p90:7.1f}  mean {statistics.mean(values):7.1f} ms")
    chain = critical_chain(steps, calls)
    if not chain:
        return
    print(f"critical chain: {len(chain)} steps, engine {sum(h['engine'] for h in chain):.0f} ms; over it, in all:")
    for name in names:
        print(f"  {name:20s} {sum(h[name] for h in chain):7.0f} ms")
    queued = [e.at for e in steps if e.kind is StepEventKind.QUEUED]
    succeeded = [e.at for e in steps if e.kind is StepEventKind.SUCCEEDED]
    if "planned" in lifecycle and queued:
        print(f"  {'run start':20s} {_ms(lifecycle['planned'], min(queued)):7.0f} ms (planned to the first step queued)")
    if "executed" in lifecycle and succeeded:
        print(f"  {'run end':20s} {_ms(max(succeeded), lifecycle['executed']):7.0f} ms (the last step succeeded to executed)")


if __name__ == "__main__":
    main()
