"""Recorder ingest benchmark: N events into EVENTS, the recorder as its own process, rows counted in the engine.

`python -m loadtest.recorder_ingest --events 200000 --json FILE`; `swarm loadtest --scenario
recorder-ingest` calls `run_recorder_ingest`.

What is measured: the events are published first (a backlog, as after a ClickHouse outage or a
burst), then the recorder starts on a fresh chdb directory; `events_per_s` is events stored over
the time from the recorder's first health answer (engine open, migrations applied, consuming) to
the moment its health probe reports all of them stored. `events_lost` is events published minus
distinct event ids found in ClickHouse; `duplicate_rows` is rows beyond one per event id before
FINAL (what a redelivery would leave until a merge).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats.errors

from loadtest.scenarios import scenario
from swarm.bus import Bus
from swarm.contracts import EVENTS, RUNS, InferenceEvent, StepEvent, StepEventKind, Subjects, step_event_id
from swarm.ops.natsserver import NatsServer
from swarm.ops.queries import RecorderNotRunning, query_via_recorder
from swarm.settings import NatsSettings

SCENARIO = "recorder-ingest"
TARGET_EVENTS_PER_S = 20_000.0
_KINDS = (StepEventKind.QUEUED, StepEventKind.STARTED, StepEventKind.INFERENCE_DONE, StepEventKind.SUCCEEDED)


def sample_events(n_events: int, steps_per_run: int = 4000) -> list[tuple[str, bytes, str]]:
    """(subject, payload, msg_id) of a realistic mix: each step queued/started/inference/succeeded plus one call."""
    base = datetime(2025, 6, 1, tzinfo=UTC)
    out: list[tuple[str, bytes, str]] = []
    i = 0
    while len(out) < n_events:
        run_id, step_id = f"bench-{i // steps_per_run}", f"s{i % steps_per_run}"
        at = base + timedelta(milliseconds=i)
        for kind in _KINDS:
            event = StepEvent(
                event_id=step_event_id(run_id, step_id, 1, kind), run_id=run_id, tenant="bench", step_id=step_id,
                agent_id=f"a{i % 300}", kind=kind, at=at, worker_id="w-1", duration_ms=12.5,
                prompt_tokens=120, completion_tokens=40, attributes={"pool": "default"},
            )  # fmt: skip
            out.append((Subjects.step_event("bench", run_id), event.model_dump_json().encode(), event.event_id))
        call = InferenceEvent(event_id=f"{run_id}.{step_id}.call", run_id=run_id, step_id=step_id, caller="worker",
                              model="sim", backend="sim", ok=True, prompt_tokens=120, completion_tokens=40,
                              queue_ms=1.0, duration_ms=11.5, at=at)  # fmt: skip
        out.append((Subjects.inference_event(), call.model_dump_json().encode(), call.event_id))
        i += 1
    return out[:n_events]


async def _publish(bus: Bus, events: list[tuple[str, bytes, str]]) -> float:
    started = time.perf_counter()
    for subject, payload, msg_id in events:
        await bus.js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id}, wait_stall=30.0)
    await bus.flush_publishes(timeout_s=120)
    return len(events) / (time.perf_counter() - started)


def _start_recorder(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m services.recorder` as its own process, its output to `log_path`."""
    with open(log_path, "ab") as log_out:
        return subprocess.Popen([sys.executable, "-m", "services.recorder"], env=env, stdout=log_out, stderr=subprocess.STDOUT)


async def _health(bus: Bus) -> dict[str, Any] | None:
    try:
        reply = await bus.nc.request(Subjects.health("recorder"), b"", timeout=1.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    details: dict[str, Any] = json.loads(reply.data)
    return details


async def run_recorder_ingest(
    events: int = 200_000,
    work_dir: Path | None = None,
    batch_max_events: int | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Run the scenario and return its figures (events_per_s, events_lost, ...)."""
    with tempfile.TemporaryDirectory(prefix="swarm-recorder-ingest-") as tmp:
        root = Path(work_dir) if work_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        server = NatsServer(store_dir=root / "nats", log_file=root / "nats.log").start()
        recorder: subprocess.Popen[bytes] | None = None
        try:
            bus = await Bus.connect(NatsSettings(url=server.url), "loadtest")
            try:
                await bus.provision(streams=(EVENTS, RUNS), buckets=())
                payloads = sample_events(events)
                publish_per_s = await _publish(bus, payloads)
                del payloads
                env = {**os.environ, "SWARM_NATS_URL": server.url, "SWARM_CLICKHOUSE_PATH": str(root / "clickhouse"),
                       "SWARM_CLICKHOUSE_DATABASE": "swarm_bench", "SWARM_RECORDER_LOG_LEVEL": "WARNING"}  # fmt: skip
                if batch_max_events:
                    env["SWARM_RECORDER_BATCH_MAX_EVENTS"] = str(batch_max_events)
                recorder = _start_recorder(env, root / "recorder.log")
                deadline = time.monotonic() + timeout_s
                while (await _health(bus)) is None:
                    if recorder.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the recorder did not start: see {root / 'recorder.log'}")
                    await asyncio.sleep(0.02)
                started = time.perf_counter()
                recorded = 0
                while time.monotonic() < deadline:
                    details = await _health(bus) or {}
                    recorded = int(details.get("events_recorded", recorded))
                    if recorded >= events:
                        break
                    await asyncio.sleep(0.05)
                elapsed_s = time.perf_counter() - started
                counts = await _counts(bus)
            finally:
                await bus.close()
        finally:
            if recorder is not None and recorder.poll() is None:
                recorder.send_signal(signal.SIGTERM)
                try:
                    recorder.wait(30)
                except subprocess.TimeoutExpired:
                    recorder.kill()
            server.stop()
    stored = counts["unique_events"]
    return {
        "scenario": SCENARIO,
        "events": events,
        "publish_events_per_s": round(publish_per_s),
        "ingest_s": round(elapsed_s, 3),
        "events_per_s": round(stored / elapsed_s) if elapsed_s > 0 else 0,
        "events_stored": stored,
        "events_lost": events - stored,
        "duplicate_rows": counts["rows"] - stored,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": stored == events and stored / elapsed_s >= TARGET_EVENTS_PER_S,
    }


async def _counts(bus: Bus) -> dict[str, int]:
    sql = (
        "SELECT (SELECT count() FROM step_events) + (SELECT count() FROM inference_calls) AS rows, "
        "(SELECT uniqExact(event_id) FROM step_events) + (SELECT uniqExact(event_id) FROM inference_calls) "
        "AS unique_events"
    )
    for _ in range(50):
        try:
            rows = await query_via_recorder(bus.nc, sql, timeout_s=30)
            return {k: int(v) for k, v in rows[0].items()}
        except RecorderNotRunning:
            await asyncio.sleep(0.1)
    raise RecorderNotRunning("the recorder stopped answering queries")


def main() -> None:
    """CLI: run the scenario, print (and optionally write) the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-max-events", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(run_recorder_ingest(args.events, batch_max_events=args.batch_max_events))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()


@scenario(
    "recorder-ingest",
    "200,000 events through the recorder into the local ClickHouse engine: events/s and events lost",
    needs_deployment=False,
    measures_floor=False,
)
async def recorder_ingest_scenario(ctx: Any) -> dict[str, Any]:
    """`swarm loadtest --scenario recorder-ingest`: its own nats-server, recorder process and engine."""
    return await run_recorder_ingest(events=max(1000, int(200_000 * ctx.options.scale_steps)))
