"""Seconds from kill -9 of a worker to its steps running again on another worker.

    swarm loadtest --scenario worker-recovery            (an embedded stack with 2 workers)

A fan-out of long steps (5 s each, simulated) goes to the pool; once a worker runs some, it is killed
with SIGKILL. Its steps come back on the work queue when their ack_wait passes with no heartbeat, and
another worker takes them at once: the figure is the time from the kill until JetStream has redelivered
as many steps as the killed worker held (the pool consumer's `num_redelivered`). The run must then
complete with every step accounted for.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import nats.errors

from loadtest.runner import LoadtestError, ScenarioContext
from loadtest.scenarios import PlanLoad, scenario
from swarm.contracts import DEFAULT_POOL, STEPS, WORKERS_CONSUMER_PREFIX, AgentSpec, Plan, StepSpec, Subjects

STEP_MS = 5000.0
PROBE_S = 0.3


def long_steps_plan(n: int) -> PlanLoad:
    """`n` independent steps of STEP_MS each: long enough that a kill lands on running steps."""
    agents = (AgentSpec(id="a", role="analyst"),)
    steps = tuple(StepSpec(id=f"s{i}", agent_id="a", instruction="work", sim_latency_ms=STEP_MS) for i in range(n))
    return PlanLoad(Plan(agents=agents, steps=steps))


async def running_by_pid(ctx: ScenarioContext) -> dict[int, int]:
    """Steps each worker process runs now, from their health replies."""
    assert ctx.client is not None
    nc = ctx.client.bus.nc
    inbox = nc.new_inbox()
    running: dict[int, int] = {}

    async def on_reply(msg: Any) -> None:
        body = json.loads(msg.data)
        running[int(str(body["instance"]).rsplit(":", 1)[1])] = int(body.get("running", 0))

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(Subjects.health("worker"), b"", reply=inbox)
    await asyncio.sleep(PROBE_S)
    await sub.unsubscribe()
    return running


@scenario("worker-recovery", "Seconds from kill -9 of a worker to its running steps redelivered to another worker.")
async def worker_recovery(ctx: ScenarioContext) -> dict[str, Any]:
    """Kill the busiest worker mid-run; time until its steps are redelivered; the run still completes."""
    pids = ctx.service_pids.get("worker", [])
    if ctx.client is None or len(pids) < 2:
        raise LoadtestError("worker-recovery needs a local stack with at least 2 workers (the embedded one has 2)")
    durable = f"{WORKERS_CONSUMER_PREFIX}-{DEFAULT_POOL}"
    js = ctx.client.bus.js
    run = asyncio.create_task(ctx.run_plan(long_steps_plan(ctx.scaled(40, 4))))
    deadline = time.monotonic() + 30
    held, victim = 0, 0
    while not held and time.monotonic() < deadline:
        running = {pid: n for pid, n in (await running_by_pid(ctx)).items() if pid in pids}
        victim, held = max(running.items(), key=lambda item: item[1], default=(0, 0))
    if not held:
        run.cancel()
        raise LoadtestError("no worker ran a step within 30 s")
    redelivered_before = (await js.consumer_info(STEPS.name, durable)).num_redelivered
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    recovery_s = None
    while time.monotonic() - killed_at < 60:
        try:
            redelivered = (await js.consumer_info(STEPS.name, durable)).num_redelivered - redelivered_before
        except nats.errors.Error:
            redelivered = 0
        if redelivered >= held:
            recovery_s = time.monotonic() - killed_at
            break
        await asyncio.sleep(0.05)
    figures = await run
    ctx.console.print(f"killed worker {victim} holding {held} running steps; redelivered after {recovery_s} s")
    return {**figures, "killed_worker_steps": held, "recovery_s": round(recovery_s, 2) if recovery_s else None}
