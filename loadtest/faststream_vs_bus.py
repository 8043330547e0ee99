"""faststream against the Bus: one JetStream pull consumer that acks, read three ways from the same stream.

A throw-away nats-server gets one stream of N 1 KiB messages. Each run makes a new durable consumer on it
(explicit acks, from the first message) and reads all N in a process of its own (uvloop, as services run),
with a no-op handler, one of:

- `bus`: `swarm.bus.consume` on a `Puller` (batch 64, one at a time, `settle` acks): the data plane;
- `faststream-batch`: a faststream pull subscriber, `PullSub(batch_size=64)`, faststream's own acks:
  faststream at its fastest;
- `controlplane`: `swarm.controlplane` as the planner and aggregator run it (one message per pull request,
  4 workers, `settle_message`: the one error policy and in-progress heartbeats).

Each process reports messages/s and CPU µs/message (its own process time, first to last message), so a
noisy, shared machine shows in the rate more than in the CPU. Medians of `--repeats` runs per variant.

    python -m loadtest.faststream_vs_bus [--messages 5000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.msg import Msg

from swarm.bus import Bus, ConsumerSpec, consume, consumer_config
from swarm.contracts import Retention, StreamSpec
from swarm.controlplane import ControlPlane
from swarm.ops.natsserver import NatsServer
from swarm.settings import NatsSettings

# Loadtest-private names, on purpose outside the swarm.* subject space.
STREAM = StreamSpec(
    name="LOADTEST_FSBENCH", subjects=("loadtest.fsbench.>",), retention=Retention.LIMITS,
    description="faststream against the Bus: the messages every variant reads.",
)  # fmt: skip
SUBJECT = "loadtest.fsbench.m"
VARIANTS = ("bus", "faststream-batch", "controlplane")
PAYLOAD_BYTES = 1024


class Meter:
    """Counts handled messages; wall and CPU time from the first to the last."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.started = (0.0, 0.0)
        self.ended = (0.0, 0.0)
        self.done = asyncio.Event()

    def tick(self) -> None:
        if self.count == 0:
            self.started = (time.perf_counter(), time.process_time())
        self.count += 1
        if self.count == self.expected:
            self.ended = (time.perf_counter(), time.process_time())
            self.done.set()

    def result(self) -> dict[str, float]:
        wall, cpu = self.ended[0] - self.started[0], self.ended[1] - self.started[1]
        handled = self.expected - 1  # intervals between the first and the last message
        return {"msgs_per_s": handled / wall, "cpu_us_per_msg": cpu / handled * 1e6}


async def read(variant: str, url: str, durable: str, expected: int) -> dict[str, float]:
    """Read `expected` messages through a new durable consumer the `variant` way; its figures."""
    settings = NatsSettings(url=url)
    spec = ConsumerSpec(stream=STREAM, durable=durable, filter_subjects=STREAM.subjects, max_ack_pending=1000)
    meter = Meter(expected)

    async def handler(_: Msg) -> None:
        meter.tick()

    if variant == "bus":
        bus = await Bus.connect(settings, "bench-bus")
        stop = asyncio.Event()
        reading = asyncio.create_task(consume(await bus.pull_subscription(spec), handler, stop, batch=64))
        await meter.done.wait()
        stop.set()
        await reading
        await bus.close()
    elif variant == "faststream-batch":
        broker = NatsBroker(url, name="bench-faststream", js_options={"timeout": settings.request_timeout_s})

        @broker.subscriber(
            SUBJECT, stream=JStream(STREAM.name, declare=False), durable=durable, config=consumer_config(spec),
            pull_sub=PullSub(batch_size=64, timeout=1.0), ack_policy=AckPolicy.ACK,
        )  # fmt: skip
        async def on_message(body: bytes) -> None:
            meter.tick()

        await broker.start()
        await meter.done.wait()
        await broker.stop()
    else:
        control = ControlPlane(settings, "bench-controlplane", graceful_timeout_s=5.0)
        control.subscribe(spec, handler, concurrency=4, fetch_timeout_s=1.0, heartbeat_s=10.0, description="bench")
        app = control.app(on_startup=_nothing)
        await app.start()
        await meter.done.wait()
        await app.stop()
    return meter.result()


async def _nothing() -> None:
    pass


async def fill(url: str, messages: int) -> None:
    """The stream, with `messages` 1 KiB messages."""
    bus = await Bus.connect(NatsSettings(url=url), "bench-fill")
    await bus.provision(streams=(STREAM,), buckets=())
    payload = b"x" * PAYLOAD_BYTES
    for i in range(0, messages, 500):
        acks = [await bus.js.publish_async(SUBJECT, payload) for _ in range(min(500, messages - i))]
        await asyncio.gather(*acks)
    await bus.close()


def run_one(variant: str, url: str, durable: str, messages: int) -> dict[str, float]:
    """One variant in a process of its own (so its CPU time is its alone)."""
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.faststream_vs_bus", "--child", variant, "--url", url, "--durable", durable,
         "--messages", str(messages)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def measure(messages: int, repeats: int) -> dict[str, Any]:
    """Every variant `repeats` times (interleaved), on one throw-away nats-server; medians per variant."""
    with tempfile.TemporaryDirectory() as home:
        server = NatsServer(store_dir=Path(home) / "nats", log_file=Path(home) / "nats.log").start()
        try:
            uvloop.run(fill(server.url, messages))
            runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
            for repeat in range(repeats):
                for variant in VARIANTS:
                    runs[variant].append(run_one(variant, server.url, f"{variant}-{repeat}", messages))
        finally:
            server.stop()
    return {
        "messages": messages,
        "payload_bytes": PAYLOAD_BYTES,
        "repeats": repeats,
        "variants": {
            variant: {
                "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in results)),
                "cpu_us_per_msg": round(statistics.median(r["cpu_us_per_msg"] for r in results)),
                "runs": results,
            }
            for variant, results in runs.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print a table (and JSON with --json); `--child` is one variant's process."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.faststream_vs_bus", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--durable", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(uvloop.run(read(args.child, args.url, args.durable, args.messages))))
        return 0
    report = measure(args.messages, args.repeats)
    print(f"{args.messages} x {PAYLOAD_BYTES} B, pull consumer with explicit acks, medians of {args.repeats}:")
    print(f"{'variant':<18} {'msgs/s':>8} {'CPU us/msg':>11}")
    for variant, figures in report["variants"].items():
        print(f"{variant:<18} {figures['msgs_per_s']:>8} {figures['cpu_us_per_msg']:>11}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
