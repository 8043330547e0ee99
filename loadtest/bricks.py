"""What a hop is built of, on this machine: `python -m loadtest.bricks [--samples 200] [--json FILE]`.

A step's hop passes through nats-server five times (the dispatch, the model call there and back, the output's
KV put, the result) and through four event loops in a row, and its simulated model call is a timer. Each
brick here is done one at a time, so nothing waits behind anything, between processes as the services are,
with a short pause before each (a service's loop goes idle between the hops of a step, and waking it is part
of the cost). Reported as p50 / p90 ms:
- core request/reply: a 1 KiB request to an echo responder in another process, and its reply;
- JetStream publish: a 1 KiB publish to a file-storage stream, and its ack;
- gateway call: one sim completion of (almost) no latency through a gateway process of its own
  (`loadtest.gateway_sim` with one caller); what the call added to its engine time is reported too;
- timer lateness: how much later than asked an `asyncio.sleep` of 100-300 ms returns on uvloop (the sim
  backend's latency is such a sleep, at a 200 ms median, and so is a Ray actor's step in `loadtest.peers`);
- a dispatch decoded and encoded (a swarm-300x4000 StepDispatch, pydantic, as the worker does per step), in
  µs of this thread's CPU time: back to back, the first after each pause, and ten after each pause. The same
  work costs several times more as the first thing a process does after waking: its caches are cold. At short
  agent turns a service wakes for nearly every message, at zero latency once per burst; that, not more work,
  is why a step costs more CPU at a 200 ms median than at none.
The NATS bricks run on a fresh nats-server (`loadtest.floor.clean_nats`), like the clean floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from loadtest import gateway_sim
from loadtest.floor import READY_LINE, clean_nats, start_ready
from loadtest.metrics import percentile
from loadtest.scenarios import build_swarm
from swarm.contracts import StepDispatch

ECHO_SUBJECT = "loadtest.bricks.echo"
STREAM = "LOADTEST_BRICKS"
STREAM_SUBJECT = "loadtest.bricks.js"
PAYLOAD = b"x" * 1024
PAUSE_S = 0.005  # before each sample: the receiving loop is idle, as between the hops of a step
TIMER_S = (0.1, 0.3)
TIMER_SAMPLES_MAX = 50
GATEWAY_SIM_LATENCY_MS = 0.01


def summary(samples: list[float], unit: str = "ms") -> dict[str, float | int | None]:
    """p50 / p90 (in `unit`, named in the keys) and the number of samples."""
    p50, p90 = percentile(samples, 50), percentile(samples, 90)
    return {
        "samples": len(samples),
        f"p50_{unit}": None if p50 is None else round(p50, 3),
        f"p90_{unit}": None if p90 is None else round(p90, 3),
    }


async def _timed(samples: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    taken = []
    for _ in range(samples):
        await asyncio.sleep(PAUSE_S)
        started = time.perf_counter()
        await call()
        taken.append((time.perf_counter() - started) * 1000.0)
    return taken


async def echo(url: str) -> None:
    """The responder process: answers every request on ECHO_SUBJECT with its payload, until stdin closes."""
    nc = await nats.connect(url, name="loadtest-bricks-echo")

    async def answer(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(ECHO_SUBJECT, cb=answer)
    await nc.flush()
    print(READY_LINE, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()


async def _core_round_trips(nc: NatsClient, url: str, samples: int) -> list[float]:
    responder = await start_ready(
        "the echo responder", "loadtest.bricks", "--echo", "--nats-url", url, stdin=asyncio.subprocess.PIPE
    )
    assert responder.stdin is not None
    try:

        async def request() -> None:
            await nc.request(ECHO_SUBJECT, PAYLOAD, timeout=5.0)

        return await _timed(samples, request)
    finally:
        responder.stdin.close()
        try:
            await asyncio.wait_for(responder.wait(), 10.0)
        except TimeoutError:
            responder.kill()
            await responder.wait()


async def _publish_acks(nc: NatsClient, samples: int) -> list[float]:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(
        name=STREAM, subjects=[STREAM_SUBJECT], storage=StorageType.FILE, max_msgs=samples,
        description="swarm loadtest: bricks (temporary)",
    ))  # fmt: skip
    try:

        async def publish() -> None:
            await js.publish(STREAM_SUBJECT, PAYLOAD)

        return await _timed(samples, publish)
    finally:
        try:
            await js.delete_stream(STREAM)
        except NotFoundError:
            pass


async def _timer_lateness(samples: int) -> list[float]:
    rng = random.Random(0)
    late = []
    for _ in range(samples):
        asked = rng.uniform(*TIMER_S)
        started = time.perf_counter()
        await asyncio.sleep(asked)
        late.append((time.perf_counter() - started - asked) * 1000.0)
    return late


def _dispatch_json() -> bytes:
    """A swarm-300x4000 step's dispatch, as the worker receives it."""
    plan = build_swarm(0, 1.0).final_plan
    step = plan.steps[1]
    agent = next(a for a in plan.agents if a.id == step.agent_id)
    dispatch = StepDispatch(run_id="lt-bricks", tenant="default", goal="Compare solar, wind and hydro power",
                            agent=agent, step=step, attempt=1)  # fmt: skip
    return dispatch.model_dump_json().encode()


def _decode_cpu_us(data: bytes, samples: int, per_wake: int | None) -> list[float]:
    """CPU µs (this thread's) per decode and encode of dispatch `data`: `per_wake` of them after each pause,
    or back to back (None, in runs of 100)."""
    for _ in range(100):  # warm: imports, schema caches
        StepDispatch.model_validate_json(data).model_dump_json()
    taken = []
    for _ in range(samples):
        if per_wake is not None:
            time.sleep(PAUSE_S)
        calls = per_wake or 100
        started = time.thread_time_ns()
        for _ in range(calls):
            StepDispatch.model_validate_json(data).model_dump_json()
        taken.append((time.thread_time_ns() - started) / calls / 1000.0)
    return taken


async def measure(samples: int = 200, gateway: str = "process", gateway_s: float = 5.0) -> dict[str, Any]:
    """Every brick; `gateway` runs the sim gateway as a process ("process") or in this one ("inprocess")."""
    with clean_nats() as url:
        nc = await nats.connect(url, name="loadtest-bricks")
        try:
            core = await _core_round_trips(nc, url, samples)
            published = await _publish_acks(nc, samples)
        finally:
            await nc.close()
    late = await _timer_lateness(min(samples, TIMER_SAMPLES_MAX))
    dispatch = _dispatch_json()
    calls = await gateway_sim.run(
        callers=1, duration_s=gateway_s, gateway=gateway, sim_latency_ms=GATEWAY_SIM_LATENCY_MS
    )
    return {
        "core_request_reply": summary(core),
        "jetstream_publish": summary(published),
        "gateway_call": {
            "samples": calls["requests"],
            "p50_ms": calls["latency_ms"]["p50"],
            "added_p50_ms": calls["added_latency_ms"]["p50"],
            "added_p90_ms": calls["added_latency_ms"]["p90"],
            "errors": calls["errors"],
        },
        "timer_lateness": summary(late),
        "dispatch_decode_cpu": {
            "back_to_back": summary(_decode_cpu_us(dispatch, samples, None), "us"),
            "first_after_a_pause": summary(_decode_cpu_us(dispatch, samples, 1), "us"),
            "ten_after_a_pause": summary(_decode_cpu_us(dispatch, samples, 10), "us"),
        },
        "pause_before_each_ms": PAUSE_S * 1000.0,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        uvloop.run(echo(args.nats_url))
        return 0
    result = uvloop.run(measure(args.samples))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
