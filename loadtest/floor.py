"""The raw floor: a bare nats-py JetStream round trip, the yardstick of the engine's step rate.

A driver process publishes N 1 KiB "step" messages to a temporary work-queue stream, at most
`in_flight` outstanding; a responder in a separate process pulls them in batches, publishes a 1 KiB
"result" per step to a second work-queue stream, waits for those acks, then acks the steps (the
dispatcher's order: publish, flush, ack); the driver pulls the results and acks them. No pydantic, no
state, no events: what is left is the messaging layer itself.

`swarm loadtest` measures it twice before each run, each time with the driver and the responder in
processes of their own (`measure_floor_in_processes`; never in the load test's process, which also
draws progress and would slow the driver down):
- the clean floor: on a fresh nats-server (`clean_nats`) of the same binary, storage and replica count
  as the deployment's, with nothing else on it. `floor_ratio` divides by this one;
- the deployment floor: on the deployment's own server, next to its idle services and streams.

The streams (LOADTEST_FLOOR_STEPS / LOADTEST_FLOOR_RESULTS) are deleted afterwards.
`python -m loadtest.floor --nats-url URL` measures on a server, `python -m loadtest.floor --clean` on a
fresh one it starts and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from loadtest.metrics import percentile
from swarm.bus import wait_for_streams_replicated
from swarm.ops.natsserver import NatsServer, cluster_ports, cluster_servers, local_nodes, start_cluster
from swarm.settings import NatsSettings

# Loadtest-private names, on purpose outside the swarm.* subject space.
STEPS_STREAM = "LOADTEST_FLOOR_STEPS"
RESULTS_STREAM = "LOADTEST_FLOOR_RESULTS"
STEPS_SUBJECT = "loadtest.floor.steps"
RESULTS_SUBJECT = "loadtest.floor.results"
RESPONDER_DURABLE = "floor-responder"
DRIVER_DURABLE = "floor-driver"
READY_LINE = "ready"
ID_BYTES = 8


class FloorError(RuntimeError):
    """The round trip could not be measured (responder died, timeout)."""


@dataclass(frozen=True)
class FloorResult:
    """What one raw round trip measured."""

    steps: int
    in_flight: int
    payload_bytes: int
    elapsed_s: float
    steps_per_s: float
    round_trip_p50_ms: float | None
    round_trip_p99_ms: float | None
    server_version: str = ""  # of the nats-server measured on
    stream_storage: str = "file"
    stream_replicas: int = 1


def _payload(step: int, size: int) -> bytes:
    head = f"{step:0{ID_BYTES}d}".encode()
    return head + b"x" * max(0, size - len(head))


async def _connect(url: str) -> NatsClient:
    return await nats.connect(servers=url.split(","), name="loadtest-floor", max_reconnect_attempts=3)


async def _create_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    storage = StorageType.FILE if settings.stream_storage == "file" else StorageType.MEMORY
    for name, subject in ((STEPS_STREAM, STEPS_SUBJECT), (RESULTS_STREAM, RESULTS_SUBJECT)):
        await _delete_stream(js, name)  # a crashed earlier measurement may have left it
        await js.add_stream(
            StreamConfig(
                name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE, storage=storage,
                num_replicas=settings.stream_replicas, description="swarm loadtest: raw round-trip floor (temporary)",
            )
        )  # fmt: skip
    if settings.stream_replicas > 1:
        await wait_for_streams_replicated(js, (STEPS_STREAM, RESULTS_STREAM), settings.request_timeout_s * 3)
    for stream, durable in ((STEPS_STREAM, RESPONDER_DURABLE), (RESULTS_STREAM, DRIVER_DURABLE)):
        await js.add_consumer(
            stream, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000)
        )


async def _delete_stream(js: JetStreamContext, name: str) -> None:
    try:
        await js.delete_stream(name)
    except NotFoundError:
        pass


async def respond(url: str, steps: int, payload_bytes: int, batch: int) -> None:
    """The responder process: every step in, one result out, until `steps` are answered."""
    nc = await _connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    psub = await js.pull_subscribe_bind(durable=RESPONDER_DURABLE, stream=STEPS_STREAM)
    print(READY_LINE, flush=True)
    answered = 0
    while answered < steps:
        try:
            msgs = await psub.fetch(batch, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            await js.publish_async(RESULTS_SUBJECT, _payload(int(msg.data[:ID_BYTES]), payload_bytes), wait_stall=10.0)
        await asyncio.wait_for(js.publish_async_completed(), 10.0)
        for msg in msgs:
            await msg.ack()
        answered += len(msgs)
    await nc.flush()
    await nc.close()


async def start_ready(what: str, module: str, *args: str, stdin: int | None = None) -> asyncio.subprocess.Process:
    """`python -m module args` in a process of its own, once it printed READY_LINE (FloorError if it does not)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdin=stdin, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30.0)
    if line.decode().strip() != READY_LINE:
        raise FloorError(f"{what} did not start (exit code {process.returncode})")
    return process


async def measure_floor(
    url: str,
    steps: int = 4000,
    in_flight: int = 300,
    payload_bytes: int = 1024,
    settings: NatsSettings | None = None,
    timeout_s: float = 120.0,
) -> FloorResult:
    """Measure the raw round trip on the NATS server at `url`; the temporary streams are deleted after."""
    settings = settings or NatsSettings()
    nc = await _connect(url)
    version = nc.connected_server_version
    server_version = f"{version.major}.{version.minor}.{version.patch}"
    js = nc.jetstream(publish_async_max_pending=4000)
    responder: asyncio.subprocess.Process | None = None
    try:
        await _create_streams(js, settings)
        responder = await start_ready(
            "the floor responder", "loadtest.floor", "--respond", "--nats-url", url, "--steps", str(steps),
            "--payload-bytes", str(payload_bytes), "--batch", str(in_flight),
        )  # fmt: skip
        elapsed_s, round_trips_ms = await asyncio.wait_for(
            _drive(js, steps, in_flight, payload_bytes, responder), timeout_s
        )
        await asyncio.wait_for(responder.wait(), 10.0)
    except TimeoutError as exc:
        raise FloorError(f"the raw round trip of {steps} steps did not finish within {timeout_s:.0f}s") from exc
    finally:
        if responder is not None and responder.returncode is None:
            responder.kill()
            await responder.wait()
        for name in (STEPS_STREAM, RESULTS_STREAM):
            await _delete_stream(js, name)
        await nc.close()
    return FloorResult(
        steps=steps, in_flight=in_flight, payload_bytes=payload_bytes, elapsed_s=elapsed_s,
        steps_per_s=steps / elapsed_s, round_trip_p50_ms=percentile(round_trips_ms, 50),
        round_trip_p99_ms=percentile(round_trips_ms, 99), server_version=server_version,
        stream_storage=settings.stream_storage, stream_replicas=settings.stream_replicas,
    )  # fmt: skip


async def measure_floor_in_processes(
    url: str, steps: int = 4000, in_flight: int = 300, settings: NatsSettings | None = None, timeout_s: float = 120.0
) -> FloorResult:
    """`measure_floor` with its driver in a process of its own (which starts the responder in another)."""
    settings = settings or NatsSettings()
    driver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.floor", "--nats-url", url, "--steps", str(steps), "--in-flight", str(in_flight),
        "--storage", settings.stream_storage, "--replicas", str(settings.stream_replicas),
        "--timeout-s", str(timeout_s), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(driver.communicate(), timeout_s + 30.0)
    except TimeoutError as exc:
        driver.kill()
        await driver.wait()
        raise FloorError(f"the floor driver did not finish within {timeout_s + 30:.0f}s") from exc
    if driver.returncode != 0:
        raise FloorError(f"the floor driver exited with {driver.returncode}: {err.decode()[-500:]}")
    return FloorResult(**json.loads(out))


@contextlib.contextmanager
def clean_nats(nodes: int = 1, parent: Path | None = None) -> Iterator[str]:
    """A fresh nats-server (or local cluster of `nodes`) with JetStream, as `swarm up` starts it, stores in a
    temporary directory under `parent` (the deployment's disk), nothing else on it; its URL, stopped after."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="clean-floor-", dir=parent))
    servers: list[NatsServer] = []
    try:
        if nodes == 1:
            servers = [NatsServer(store_dir=home / "nats", log_file=home / "nats.log").start()]
        else:
            ports = cluster_ports(nodes)  # client, monitoring, route ports: node i uses first + i
            layout = local_nodes(home, [(ports[0] + i, ports[1] + i, ports[2] + i) for i in range(nodes)])
            servers = start_cluster(cluster_servers(home, layout, home))
        yield ",".join(s.url for s in servers)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)


async def _drive(
    js: JetStreamContext, steps: int, in_flight: int, payload_bytes: int, responder: asyncio.subprocess.Process
) -> tuple[float, list[float]]:
    """Publish the steps (at most `in_flight` outstanding) and consume the results; elapsed time and round trips."""
    slots = asyncio.Semaphore(in_flight)
    sent_at: list[float] = [0.0] * steps
    round_trips_ms: list[float] = []
    psub = await js.pull_subscribe_bind(durable=DRIVER_DURABLE, stream=RESULTS_STREAM)

    async def publish() -> None:
        for step in range(steps):
            await slots.acquire()
            sent_at[step] = time.perf_counter()
            await js.publish_async(STEPS_SUBJECT, _payload(step, payload_bytes), wait_stall=10.0)
        await js.publish_async_completed()

    started = time.perf_counter()
    publisher = asyncio.create_task(publish())
    try:
        while len(round_trips_ms) < steps:
            if responder.returncode is not None:
                raise FloorError(f"the floor responder exited with {responder.returncode}")
            try:
                msgs = await psub.fetch(in_flight, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            now = time.perf_counter()
            for msg in msgs:
                round_trips_ms.append((now - sent_at[int(msg.data[:ID_BYTES])]) * 1000.0)
                await msg.ack()
                slots.release()
        elapsed_s = time.perf_counter() - started
        await publisher
    finally:
        publisher.cancel()
    return elapsed_s, round_trips_ms


def main() -> None:
    """`python -m loadtest.floor`: measure alone (or, with --respond, be the responder process)."""
    parser = argparse.ArgumentParser(description="Raw nats-py JetStream round trip (the loadtest floor).")
    parser.add_argument("--nats-url", default=NatsSettings().url)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, default=300)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--storage", choices=("file", "memory"), default="file", help="The temporary streams' storage.")
    parser.add_argument("--replicas", type=int, default=1, help="The temporary streams' replicas.")
    parser.add_argument("--clean", action="store_true", help="Measure on a fresh nats-server (--replicas nodes).")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--respond", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.respond:
        uvloop.run(respond(args.nats_url, args.steps, args.payload_bytes, args.batch))
        return
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(clean_nats(args.replicas)) if args.clean else args.nats_url
        settings = NatsSettings(url=url, stream_storage=args.storage, stream_replicas=args.replicas)
        result = uvloop.run(measure_floor(url, args.steps, args.in_flight, args.payload_bytes, settings, args.timeout_s))
    print(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
