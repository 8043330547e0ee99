"""Scenario `gateway-sim`: 300 concurrent callers against the inference gateway on the `sim` backend.

Each caller sends one request after another through InferenceClient for `duration_s` seconds (after a
warm-up). The figure of merit is the gateway's added latency: what the caller observed minus the engine's
own simulated time (`duration_ms` in the reply) — admission, queueing, (de)serialization and two NATS hops.
Target: added p50 < 2 ms.

Against a running stack (`--nats-url`, its gateway on the sim backend) or self-contained: a nats-server
and a sim gateway (its own process by default, as deployed; `--gateway inprocess` shares the driver's loop).

    python -m loadtest.gateway_sim --json FILE [--nats-url URL] [--callers 300] [--duration-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import uvloop
from nats.aio.client import Client as NatsClient

from loadtest.metrics import percentile
from loadtest.scenarios import scenario
from swarm.contracts import InferenceRequest, Subjects
from swarm.inference import InferenceClient, chat

SCENARIO = "gateway-sim"
TARGET_ADDED_P50_MS = 2.0
DEFAULT_CALLERS = 300
DEFAULT_DURATION_S = 10.0
WARMUP_S = 2.0
# Callers start spread over this window: 300 callers released at one instant stay in lock-step for a
# while (a closed loop keeps its phase), measuring bursts of 300 rather than a steady load.
STAGGER_S = 1.5
CONNECTIONS = 4  # caller connections, round-robin: one socket for 300 callers would be its own bottleneck
GATEWAY_MAX_QUEUE = 1024  # the self-started gateway admits every caller: this measures latency, not rejection
GATEWAY_READY_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0
PROMPT = chat("You are a terse research assistant.", "Summarize the trade-offs of wind and solar power.")


async def _wait_for_gateway(nc: NatsClient, timeout_s: float = GATEWAY_READY_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = await nc.request(Subjects.health("gateway"), b"", timeout=1)
            health: dict[str, Any] = json.loads(reply.data)
            return health
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no gateway answered its health probe within {timeout_s:.0f}s") from None
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _own_stack(gateway: str, sim: dict[str, Any]) -> AsyncIterator[str]:
    """A nats-server and a sim gateway (a process, or in this process), torn down afterwards."""
    from swarm.ops.natsserver import NatsServer

    with tempfile.TemporaryDirectory(prefix="gateway-sim-") as tmp:
        server = NatsServer(store_dir=Path(tmp) / "nats", log_file=Path(tmp) / "nats.log").start()
        try:
            settings = {"backend": "sim", "max_queue": GATEWAY_MAX_QUEUE, "log_level": "WARNING", **sim}
            if gateway == "process":
                env = {**os.environ, "SWARM_NATS_URL": server.url}
                env.update({f"SWARM_GATEWAY_{key.upper()}": str(value) for key, value in settings.items()})
                process = _spawn_gateway(env, Path(tmp) / "gateway.log")
                try:
                    yield server.url
                finally:
                    process.terminate()
                    await asyncio.to_thread(process.wait, 30)
            else:
                async with _in_process_gateway(server.url, settings):
                    yield server.url
        finally:
            server.stop()


def _spawn_gateway(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "services.gateway"], env=env, stderr=log)


@contextlib.asynccontextmanager
async def _in_process_gateway(url: str, fields: dict[str, Any]) -> AsyncIterator[None]:
    from services.gateway.server import serve
    from services.gateway.settings import GatewaySettings
    from swarm.bus import Bus
    from swarm.settings import NatsSettings

    bus = await Bus.connect(NatsSettings(url=url), "gateway")
    try:
        async with serve(GatewaySettings(**fields), bus):
            yield
    finally:
        await bus.close()


async def drive(
    nats_url: str,
    callers: int = DEFAULT_CALLERS,
    duration_s: float = DEFAULT_DURATION_S,
    sim_latency_ms: float | None = None,
) -> dict[str, Any]:
    """Run the callers against the gateway at `nats_url`; the scenario's figures."""
    connections = [await nats.connect(nats_url) for _ in range(CONNECTIONS)]
    try:
        health_before = await _wait_for_gateway(connections[0])
        clients = [InferenceClient(nc) for nc in connections]
        added_ms: list[float] = []
        latency_ms: list[float] = []
        errors: dict[str, int] = {}
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + WARMUP_S
        stop_at = measure_from + duration_s
        run_tag = uuid.uuid4().hex[:8]

        async def caller(n: int) -> None:
            client = clients[n % len(clients)]
            await asyncio.sleep(STAGGER_S * n / callers)
            i = 0
            while loop.time() < stop_at:
                request = InferenceRequest(
                    request_id=f"gs-{run_tag}-{n}-{i}", messages=PROMPT, max_tokens=64, sim_latency_ms=sim_latency_ms
                )
                i += 1
                started = time.perf_counter()
                response = await client.complete(request, timeout_s=CALL_TIMEOUT_S)
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                if loop.time() < measure_from:
                    continue
                if not response.ok:
                    key = (response.error or "?").split(":")[0]
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latency_ms.append(elapsed_ms)
                added_ms.append(elapsed_ms - response.duration_ms)

        await asyncio.gather(*(caller(n) for n in range(callers)))
        measured_s = duration_s + max(0.0, loop.time() - stop_at)  # the last calls end after stop_at
        health_after = await _wait_for_gateway(connections[0])
    finally:
        for nc in connections:
            await nc.close()
    p50 = percentile(added_ms, 50)
    return {
        "scenario": SCENARIO,
        "callers": callers,
        "duration_s": duration_s,
        "requests": len(added_ms),
        "requests_per_s": round(len(added_ms) / measured_s, 1),
        "added_latency_ms": {
            "p50": _round(p50),
            "p90": _round(percentile(added_ms, 90)),
            "p99": _round(percentile(added_ms, 99)),
        },
        "latency_ms": {"p50": _round(percentile(latency_ms, 50)), "p99": _round(percentile(latency_ms, 99))},
        "errors": errors,
        "rejected_overloaded": health_after.get("rejected_count", 0) - health_before.get("rejected_count", 0),
        "gateway": {key: health_after.get(key) for key in ("backend", "model", "slots", "max_queue", "instance")},
        "target_added_p50_ms": TARGET_ADDED_P50_MS,
        "passed": p50 is not None and p50 < TARGET_ADDED_P50_MS and not errors,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def run(
    nats_url: str | None = None,
    callers: int = DEFAULT_CALLERS,
    duration_s: float = DEFAULT_DURATION_S,
    gateway: str = "process",
    sim_latency_ms: float | None = None,
    sim: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scenario against a running stack (`nats_url`), or against a nats-server and gateway it starts."""
    if nats_url:
        return await drive(nats_url, callers, duration_s, sim_latency_ms)
    async with _own_stack(gateway, sim or {}) as url:
        result = await drive(url, callers, duration_s, sim_latency_ms)
    result["stack"] = f"own nats-server, gateway {gateway}"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures to this file (and print them)")
    parser.add_argument("--nats-url", help="a running stack whose gateway uses the sim backend")
    parser.add_argument("--callers", type=int, default=DEFAULT_CALLERS)
    parser.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--gateway", choices=("process", "inprocess"), default="process")
    parser.add_argument(
        "--sim-latency-ms", type=float, help="force every call's simulated latency (default: the latency model)"
    )
    args = parser.parse_args(argv)
    result = uvloop.run(run(args.nats_url, args.callers, args.duration_s, args.gateway, args.sim_latency_ms))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())


@scenario(
    "gateway-sim",
    "300 concurrent callers against the gateway (sim backend): requests/s and the latency it adds",
    needs_deployment=False,
    measures_floor=False,
)
async def gateway_sim_scenario(ctx: Any) -> dict[str, Any]:
    """`swarm loadtest --scenario gateway-sim`: its own nats-server and gateway process unless --nats-url."""
    return await run(ctx.options.nats_url)
