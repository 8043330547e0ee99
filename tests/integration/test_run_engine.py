"""Dispatcher, workers, aggregator and the sim gateway in-process on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from nats.js.errors import KeyNotFoundError, NoKeysError, NoStreamResponseError, NotFoundError

from services.aggregator.__main__ import main as aggregator_main
from services.aggregator.settings import AggregatorSettings
from services.dispatcher.__main__ import main as dispatcher_main
from services.dispatcher.settings import DispatcherSettings
from services.gateway.backends import create_engine
from services.gateway.server import GatewayServer, serve
from services.gateway.settings import GatewaySettings
from services.worker_pool.__main__ import main as worker_main
from services.worker_pool.settings import WorkerSettings
from swarm.bus import Bus
from swarm.client import SwarmClient, read_step_events
from swarm.contracts import (
    DISPATCHER_PLANS_CONSUMER,
    DISPATCHER_RESULTS_CONSUMER,
    EVENTS,
    RESULT_PARTITIONS,
    RESULTS,
    RUN_STATE_BUCKET,
    RUNS,
    STEPS,
    AgentSpec,
    InferenceEvent,
    InferenceEventBatch,
    Keys,
    Plan,
    PlanSource,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPlanned,
    RunPolicy,
    StepDispatch,
    StepResult,
    StepResultBatch,
    StepSpec,
    StepStatus,
    Subjects,
    result_partition,
    utc_now,
)
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration


@asynccontextmanager
async def service(main, settings) -> AsyncIterator[asyncio.Event]:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(main(stop, settings))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@asynccontextmanager
async def gateway(bus: Bus) -> AsyncIterator[None]:
    """A sim gateway answering instantly apart from each step's own latency."""
    async with serve(GatewaySettings(backend="sim", sim_latency_scale=1.0, sim_ttft_ms=0, sim_tokens_per_s=1e9), bus):
        yield


def layered_plan(layers: int, width: int, sim_latency_ms: float | None = None) -> Plan:
    """Agent i takes one turn per layer; every turn needs the whole previous layer."""
    agents = tuple(AgentSpec(id=f"a{i}", role="analyst") for i in range(width))
    steps = []
    for layer in range(layers):
        for i in range(width):
            deps = tuple(f"s{layer - 1}_{j}" for j in range(width)) if layer else ()
            steps.append(StepSpec(id=f"s{layer}_{i}", agent_id=f"a{i}", instruction="work", depends_on=deps,
                                  sim_latency_ms=sim_latency_ms))  # fmt: skip
    return Plan(agents=agents, steps=tuple(steps))


async def start_run(bus: Bus, run_id: str, plan: Plan) -> None:
    planned = RunPlanned(run_id=run_id, tenant="t", goal="g", plan=plan, source=PlanSource.EXPLICIT, submitted_at=utc_now())
    await bus.publish(Subjects.run_event("t", run_id, "planned"), planned, msg_id=f"{run_id}.planned")


async def succeeded_events(bus: Bus, run_id: str) -> list[str]:
    """Step ids of the run's distinct 'succeeded' events in the EVENTS stream (a replay repeats an event id)."""
    events = {e.event_id: e for e in await read_step_events(bus.js, run_id) if e.kind == "succeeded"}
    return [e.step_id for e in events.values()]


async def test_layered_run_completes_and_counts_every_step_once(bus: Bus, nats_settings: NatsSettings) -> None:
    plan = layered_plan(layers=4, width=10)
    async with (
        gateway(bus),
        service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
        service(worker_main, WorkerSettings(nats=nats_settings, concurrency=16)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        await start_run(bus, "run-a", plan)
        client = SwarmClient(bus)
        final = await client.wait("run-a", "t", timeout_s=60)
    assert isinstance(final, RunCompleted), final
    assert final.summary.steps_succeeded == 40 and final.summary.retries_count == 0
    events = await succeeded_events(bus, "run-a")
    assert sorted(events) == sorted(s.id for s in plan.steps)
    # The worker's own events travel inside its results; the dispatcher publishes them with its own.
    kinds = Counter((e.step_id, e.kind) for e in await read_step_events(bus.js, "run-a"))
    for step in plan.steps:
        assert [kinds[step.id, k] for k in ("queued", "started", "inference_done", "succeeded")] == [1, 1, 1, 1]
    assert await bus.kv_keys(RUN_STATE_BUCKET, Keys.RUNNING_MARKERS_ALL) == []  # its running marker went with it
    # Every call of the run, whole replies all, carries its time to first token.
    calls = await inference_events(bus, "run-a", least=40)
    assert len(calls) >= 40 and all(c.ttft_ms is not None and c.ttft_ms >= 0 for c in calls), calls[:3]


async def inference_events(bus: Bus, run_id: str, least: int) -> list[InferenceEvent]:
    """The run's inference events in EVENTS (the gateway publishes them in batches, a little later)."""
    psub = await bus.js.pull_subscribe(Subjects.inference_event_batch(), stream=EVENTS.name)
    found: dict[str, InferenceEvent] = {}
    for _ in range(20):
        try:
            msgs = await psub.fetch(100, timeout=0.5)
        except TimeoutError:
            if len(found) >= least:
                break
            continue
        batches = (InferenceEventBatch.model_validate_json(m.data) for m in msgs)
        found |= {e.event_id: e for b in batches for e in b.events if e.run_id == run_id}
    await psub.unsubscribe()
    return list(found.values())


async def test_dispatcher_restart_mid_run_resumes_from_its_checkpoint(bus: Bus, nats_settings: NatsSettings) -> None:
    plan = layered_plan(layers=8, width=8)
    settings = DispatcherSettings(nats=nats_settings)
    async with (
        gateway(bus),
        service(worker_main, WorkerSettings(nats=nats_settings, concurrency=8)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        async with service(dispatcher_main, settings):
            await start_run(bus, "run-b", plan)
            await asyncio.sleep(0.3)
        async with service(dispatcher_main, settings):
            final = await SwarmClient(bus).wait("run-b", "t", timeout_s=60)
    assert isinstance(final, RunCompleted), final
    events = await succeeded_events(bus, "run-b")
    assert sorted(events) == sorted(s.id for s in plan.steps)  # each step exactly once


async def test_two_dispatcher_replicas_share_runs_and_one_leaving_hands_over(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    plans = {f"run-{k}": layered_plan(layers=6, width=6, sim_latency_ms=150) for k in range(4)}
    settings = DispatcherSettings(nats=nats_settings)
    async with (
        gateway(bus),
        service(worker_main, WorkerSettings(nats=nats_settings, concurrency=8)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
        service(dispatcher_main, settings),
    ):
        async with service(dispatcher_main, settings):
            leases = await bus.js.key_value("swarm_dispatcher_leases")

            async def owners() -> set[bytes | None]:
                try:
                    keys = await leases.keys()
                except NoKeysError:  # not one lease taken yet
                    return set()
                held = set()
                for key in (k for k in keys if k.startswith("p")):
                    with contextlib.suppress(KeyNotFoundError):  # released between the listing and the read
                        held.add((await leases.get(key)).value)
                return held

            for _ in range(150):  # the second replica takes its share at its next renewals (seconds, more when busy)
                if len(await owners()) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(await owners()) == 2  # both hold leases on a share of the partitions
            for run_id, plan in plans.items():
                await start_run(bus, run_id, plan)
            await asyncio.sleep(0.5)
        # The second replica left mid-run; the first takes its partitions and their runs over.
        for run_id, plan in plans.items():
            final = await SwarmClient(bus).wait(run_id, "t", timeout_s=60)
            assert isinstance(final, RunCompleted), final
            assert sorted(await succeeded_events(bus, run_id)) == sorted(s.id for s in plan.steps)


async def test_a_step_lost_from_the_queue_is_retried(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = DispatcherSettings(nats=nats_settings, lost_step_grace_s=0.5, sweep_interval_s=0.2, retry_base_s=0)
    plan = Plan(
        agents=(AgentSpec(id="a", role="r"),),
        steps=(StepSpec(id="only", agent_id="a", instruction="work", timeout_s=0.5),),
    )
    async with gateway(bus), service(dispatcher_main, settings), service(aggregator_main, AggregatorSettings(nats=nats_settings)):
        await start_run(bus, "run-lost", plan)
        for _ in range(50):  # wait for the dispatch, then lose it as a crashed server would
            if (await bus.js.stream_info("STEPS")).state.messages:
                break
            await asyncio.sleep(0.05)
        await bus.js.purge_stream("STEPS")
        await asyncio.sleep(2.0)  # longer than 2 x timeout + grace: the attempt is declared lost
        async with service(worker_main, WorkerSettings(nats=nats_settings)):
            final = await SwarmClient(bus).wait("run-lost", "t", timeout_s=30)
    assert isinstance(final, RunCompleted), final
    assert final.summary.retries_count >= 1


async def test_small_outputs_reach_dependents_inline_and_large_ones_by_key(bus: Bus, nats_settings: NatsSettings) -> None:
    """The dispatcher's side of inline inputs, with this test as the worker pool."""
    plan = Plan(
        agents=(AgentSpec(id="a", role="analyst"),),
        steps=(
            StepSpec(id="small", agent_id="a", instruction="x"),
            StepSpec(id="large", agent_id="a", instruction="x"),
            StepSpec(id="merge", agent_id="a", instruction="x", depends_on=("small", "large")),
        ),
    )
    pool = await bus.js.pull_subscribe(Subjects.steps("default"), durable="test-pool", stream=STEPS.name)

    async def next_dispatches(n: int) -> dict[str, StepDispatch]:
        dispatches: dict[str, StepDispatch] = {}
        while len(dispatches) < n:
            for msg in await pool.fetch(n - len(dispatches), timeout=10):
                await msg.ack()
                dispatch = StepDispatch.model_validate_json(msg.data)
                dispatches[dispatch.step.id] = dispatch
        return dispatches

    async with service(dispatcher_main, DispatcherSettings(nats=nats_settings)):
        await start_run(bus, "run-inline", plan)
        first = await next_dispatches(2)
        assert set(first) == {"small", "large"} and not any(d.inputs for d in first.values())
        assert await bus.kv_keys(RUN_STATE_BUCKET, Keys.RUNNING_MARKERS_ALL) == [Keys.running_marker("run-inline")]
        for step_id, output in (("small", "a short answer"), ("large", None)):  # None: over the inline size
            now = utc_now()
            result = StepResult(
                run_id="run-inline", step_id=step_id, attempt=1, status=StepStatus.SUCCEEDED, output=output,
                output_key=f"run-inline.{step_id}", started_at=now, finished_at=now, worker_id="test",
            )  # fmt: skip
            await bus.publish(Subjects.result("t", "run-inline"), result)
        merge = (await next_dispatches(1))["merge"]
    assert merge.inputs == {"small": "a short answer"}  # the worker reads "large" from the bucket


# ---------------------------------------------------------------------------- poison messages
# Each: the bad message is logged and terminated (not redelivered forever), and runs on the same
# results partition still complete.


def same_partition_run_ids(first: str, n: int) -> list[str]:
    """`first` and n-1 more run ids hashed to the same results partition."""
    ids, k = [first], 0
    while len(ids) < n:
        k += 1
        if result_partition(f"{first}-{k}") == result_partition(first):
            ids.append(f"{first}-{k}")
    return ids


async def completed_event(bus: Bus, run_id: str, timeout_s: float = 60) -> RunCompleted:
    """The run's own `completed` event (a forged terminal event must not end the wait)."""
    subject = Subjects.run_event("t", run_id, "completed")
    for _ in range(int(timeout_s / 0.1)):
        try:
            return RunCompleted.model_validate_json((await bus.js.get_last_msg(RUNS.name, subject)).data)
        except NotFoundError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not complete")


async def consumer_settled(bus: Bus, stream: str, durable: str) -> bool:
    """Whether the consumer holds nothing unacknowledged or pending (the bad message is gone for good)."""
    for _ in range(100):
        info = await bus.js.consumer_info(stream, durable)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_submission_time_in_the_future_neither_wedges_the_partition_nor_skews_durations(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    future_run, later_run = same_partition_run_ids("run-future", 2)
    plan = layered_plan(layers=2, width=3)
    async with (
        gateway(bus),
        service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
        service(worker_main, WorkerSettings(nats=nats_settings)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        tomorrow = utc_now() + timedelta(days=1)
        planned = RunPlanned(run_id=future_run, tenant="t", goal="g", plan=plan, source=PlanSource.EXPLICIT,
                             submitted_at=tomorrow)  # fmt: skip
        await bus.publish(Subjects.run_event("t", future_run, "planned"), planned, msg_id=f"{future_run}.planned")
        first = await completed_event(bus, future_run)
        await start_run(bus, later_run, plan)
        later = await completed_event(bus, later_run)
    assert 0 <= first.summary.wall_ms < 60_000  # from the plan's own time, not the client's claim
    assert later.summary.steps_succeeded == 6


async def test_an_invalid_plan_fails_its_run_with_the_reason_and_is_not_redelivered(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    unknown_dep, cycle, good = same_partition_run_ids("run-badplan", 3)
    agents = [{"id": "a", "role": "r"}]
    bad_plans = {
        unknown_dep: [{"id": "s1", "agent_id": "a", "instruction": "x", "depends_on": ["nope"]}],
        cycle: [{"id": "s1", "agent_id": "a", "instruction": "x", "depends_on": ["s2"]},
                {"id": "s2", "agent_id": "a", "instruction": "x", "depends_on": ["s1"]}],
    }  # fmt: skip
    async with (
        gateway(bus),
        service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
        service(worker_main, WorkerSettings(nats=nats_settings)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        for run_id, steps in bad_plans.items():  # raw JSON: what a forged or buggy producer could send
            body = {"run_id": run_id, "tenant": "t", "goal": "g", "source": "explicit",
                    "submitted_at": utc_now().isoformat(), "plan": {"agents": agents, "steps": steps}}  # fmt: skip
            await bus.publish_bytes(Subjects.run_event("t", run_id, "planned"), json.dumps(body).encode())
        for run_id, reason in ((unknown_dep, "unknown step nope"), (cycle, "cycle")):
            failed = RunFailed.model_validate_json(
                (await wait_for_msg(bus, Subjects.run_event("t", run_id, "failed"))).data
            )
            assert "invalid plan" in failed.error and reason in failed.error
        await start_run(bus, good, layered_plan(layers=2, width=2))
        assert (await completed_event(bus, good)).summary.steps_succeeded == 4
        assert await consumer_settled(bus, RUNS.name, DISPATCHER_PLANS_CONSUMER)


async def wait_for_msg(bus: Bus, subject: str, timeout_s: float = 30):  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.1)):
        try:
            return await bus.js.get_last_msg(RUNS.name, subject)
        except NotFoundError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing on {subject}")


async def test_results_for_unknown_runs_and_steps_are_given_up(bus: Bus, nats_settings: NatsSettings) -> None:
    settings = DispatcherSettings(nats=nats_settings, results_give_up_after=2)
    now = utc_now()
    ghost = StepResult(run_id="run-ghost", step_id="s", attempt=1, status=StepStatus.SUCCEEDED, started_at=now,
                       finished_at=now, worker_id="forger")  # fmt: skip
    async with (
        gateway(bus),
        service(dispatcher_main, settings),
        service(worker_main, WorkerSettings(nats=nats_settings)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        await bus.publish(Subjects.result("t", "run-ghost"), ghost)
        run_id = same_partition_run_ids("run-real", 1)[0]
        await start_run(bus, run_id, layered_plan(layers=1, width=2, sim_latency_ms=1500))
        for forged in (
            ghost.model_copy(update={"run_id": run_id, "step_id": "no-such-step"}),  # a step the run lacks
            ghost.model_copy(update={"run_id": run_id, "step_id": "s0_0", "attempt": 999}),  # an attempt never made
        ):
            await bus.publish(Subjects.result("t", run_id), forged)
        # Batches: another run's result beside one the run lacks (each dropped alone), and one holding only
        # another run's result (the message is refused).
        elsewhere = ghost.model_copy(update={"step_id": "s0_0", "status": StepStatus.FAILED, "retryable": False})
        for forged_batch in ((elsewhere, ghost.model_copy(update={"run_id": run_id, "step_id": "no-such-step"})),
                             (elsewhere,)):  # fmt: skip
            await bus.publish(Subjects.result("t", run_id), StepResultBatch(results=forged_batch))
        # A genuine-looking final failure of a real attempt, on another tenant's subject (what a worker
        # dedicated to that tenant may publish): applied, it would fail the run before its worker finishes.
        fatal = ghost.model_copy(update={
            "run_id": run_id, "step_id": "s0_0", "status": StepStatus.FAILED, "retryable": False, "error": "forged",
        })  # fmt: skip
        for _ in range(100):  # while its attempt runs: applied now, it would end the step and fail the run
            if any(e.step_id == "s0_0" and e.kind == "queued" for e in await read_step_events(bus.js, run_id, 0.1)):
                break
            await asyncio.sleep(0.05)
        await bus.publish(Subjects.result("intruder", run_id), fatal)
        await bus.publish(Subjects.result("intruder", run_id), StepResultBatch(results=(fatal,)))
        await completed_event(bus, run_id, timeout_s=30)
        for partition in {result_partition("run-ghost"), result_partition(run_id)}:
            assert await consumer_settled(bus, RESULTS.name, f"{DISPATCHER_RESULTS_CONSUMER}-{partition}")
    assert (await bus.js.stream_info(RESULTS.name)).state.messages == 0


async def test_a_result_on_a_partition_nobody_reads_is_refused_at_publish(bus: Bus) -> None:
    now = utc_now()
    result = StepResult(run_id="r", step_id="s", attempt=1, status=StepStatus.SUCCEEDED, started_at=now,
                        finished_at=now, worker_id="w")  # fmt: skip
    with pytest.raises(NoStreamResponseError):
        await bus.publish(f"swarm.results.{RESULT_PARTITIONS + 83}.r", result)


async def test_forged_run_ends_do_not_make_workers_drop_a_live_run(bus: Bus, nats_settings: NatsSettings) -> None:
    plan = layered_plan(layers=3, width=4, sim_latency_ms=200)
    async with (
        gateway(bus),
        service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
        service(worker_main, WorkerSettings(nats=nats_settings)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        await start_run(bus, "run-live", plan)
        await asyncio.sleep(0.3)
        forged = RunFailed(run_id="run-live", tenant="t", error="forged")
        await bus.nc.publish(Subjects.run_event("t", "run-live", "failed"), b'{"run_id": "run-live"}')
        await bus.nc.publish(Subjects.run_event("t", "run-live", "failed"), forged.model_dump_json().encode())
        await bus.nc.publish(Subjects.run_event("t", "run-live", "cancelled"), b"\x00\xff not json")
        final = await completed_event(bus, "run-live", timeout_s=30)
    assert final.summary.steps_succeeded == 12


# ---------------------------------------------------------------------------- cancel stops work

CANCEL_GRACE_S = 5.0  # the bound: the worker believes a run's end once its checkpoint confirms it


async def test_cancel_interrupts_running_steps_and_aborts_their_model_calls(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    # Steps of a minute each: any that finishes, or starts, after the cancel was not stopped.
    plan = layered_plan(layers=3, width=6, sim_latency_ms=60_000)
    settings = GatewaySettings(backend="sim", sim_latency_scale=1.0)
    server = GatewayServer(bus, create_engine(settings), settings)
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        async with (
            service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
            service(worker_main, WorkerSettings(nats=nats_settings, concurrency=16)),
            service(aggregator_main, AggregatorSettings(nats=nats_settings)),
        ):
            await start_run(bus, "run-cut", plan)
            for _ in range(300):
                if server.running == 6:
                    break
                await asyncio.sleep(0.05)
            assert server.running == 6  # the first layer is generating
            client = SwarmClient(bus)
            await client.cancel("run-cut", "t", reason="test")
            final = await client.wait("run-cut", "t", timeout_s=30)
            seen_at = loop.time()
            for _ in range(int(CANCEL_GRACE_S / 0.05)):
                if server.in_flight == 0:
                    break
                await asyncio.sleep(0.05)
            idle_after_s = loop.time() - seen_at
            assert server.in_flight == 0 and server.cancelled_count == 6, server.health()
            await asyncio.sleep(1.0)  # anything still going would show by now
            events = await read_step_events(bus.js, "run-cut")
    finally:
        await server.stop()
        await server.engine.close()
    assert isinstance(final, RunCancelled), final
    by_kind = Counter(e.kind for e in events)
    assert by_kind["started"] == 6 and by_kind["succeeded"] == by_kind["failed"] == 0, by_kind
    assert by_kind["cancelled"] == len(plan.steps)  # every step accounted for, once
    late = [e for e in events if e.kind != "cancelled" and e.at > final.at + timedelta(seconds=CANCEL_GRACE_S)]
    assert late == []
    calls = await inference_events(bus, "run-cut", least=6)
    assert sorted(c.error for c in calls) == ["cancelled by the caller"] * 6
    print(f"cancel: gateway idle {idle_after_s * 1000:.0f} ms after the client saw the cancelled event")


async def test_a_quorum_run_completes_without_a_failed_agent_and_names_it(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    agents = tuple(AgentSpec(id=f"a{i}", role="analyst") for i in range(4))
    steps = tuple(
        StepSpec(id=f"s{i}", agent_id=f"a{i}", instruction="work", max_attempts=1,
                 sim_fault="fail_once" if i == 3 else None)
        for i in range(4)
    )  # fmt: skip
    planned = RunPlanned(
        run_id="run-q", tenant="t", goal="g", plan=Plan(agents=agents, steps=steps), source=PlanSource.EXPLICIT,
        policy=RunPolicy.QUORUM, quorum=0.75, submitted_at=utc_now(),
    )  # fmt: skip
    async with (
        gateway(bus),
        service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
        service(worker_main, WorkerSettings(nats=nats_settings)),
        service(aggregator_main, AggregatorSettings(nats=nats_settings)),
    ):
        await bus.publish(Subjects.run_event("t", "run-q", "planned"), planned, msg_id="run-q.planned")
        final = await completed_event(bus, "run-q", timeout_s=30)
    (missing,) = final.missing_agents
    assert (missing.agent_id, missing.step_id) == ("a3", "s3") and "fault injected" in missing.error


# ---------------------------------------------------------------------------- step timeouts, draining on SIGTERM


async def test_a_step_past_its_timeout_fails_and_its_model_call_is_stopped(
    bus: Bus, nats_settings: NatsSettings
) -> None:
    steps = (StepSpec(id="slow", agent_id="a0", instruction="work", timeout_s=1.0, max_attempts=1, sim_latency_ms=60_000),)
    plan = Plan(agents=(AgentSpec(id="a0", role="analyst"),), steps=steps)
    settings = GatewaySettings(backend="sim", sim_latency_scale=1.0)
    server = GatewayServer(bus, create_engine(settings), settings)
    await server.start()
    try:
        async with (
            service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
            service(worker_main, WorkerSettings(nats=nats_settings)),
        ):
            await start_run(bus, "run-slow", plan)
            final = await SwarmClient(bus).wait("run-slow", "t", timeout_s=30)
            for _ in range(100):  # the call would generate for a minute: its abort (or deadline) frees the gateway
                if server.in_flight == 0:
                    break
                await asyncio.sleep(0.05)
            assert server.in_flight == 0
    finally:
        await server.stop()
        await server.engine.close()
    assert isinstance(final, RunFailed) and "step timed out after 1s" in final.error, final


def service_process(module: str, nats_settings: NatsSettings, **env: str) -> subprocess.Popen[bytes]:
    """A service as its own process (what `swarm up` starts), so that SIGTERM reaches its real handler."""
    return subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, "SWARM_NATS_URL": nats_settings.url, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


async def step_ids_succeeded(bus: Bus, run_id: str, least: int) -> list[str]:
    for _ in range(100):
        done = await succeeded_events(bus, run_id)
        if len(done) >= least:
            return done
        await asyncio.sleep(0.1)
    return await succeeded_events(bus, run_id)


async def test_sigterm_drains_a_worker_and_a_dispatcher_mid_run(bus: Bus, nats_settings: NatsSettings) -> None:
    plan = layered_plan(layers=2, width=6, sim_latency_ms=1500)
    settings = GatewaySettings(backend="sim", sim_latency_scale=1.0)
    server = GatewayServer(bus, create_engine(settings), settings)
    await server.start()
    worker = service_process("services.worker_pool", nats_settings, SWARM_WORKER_SANDBOX="unsafe-none")
    dispatcher = service_process("services.dispatcher", nats_settings)
    try:
        await start_run(bus, "run-drain", plan)
        for _ in range(600):
            if server.running == 6:
                break
            await asyncio.sleep(0.05)
        assert server.running == 6, "the first layer never ran"
        # Both get SIGTERM while the first layer runs: the worker finishes its six steps and reports them,
        # the dispatcher checkpoints and lets go; both exit cleanly.
        worker.send_signal(signal.SIGTERM)
        dispatcher.send_signal(signal.SIGTERM)
        for proc in (worker, dispatcher):
            code = await asyncio.to_thread(proc.wait, 60)
            assert code == 0, (proc.args, (proc.stderr.read() if proc.stderr else b"")[-2000:])
        async with (
            service(dispatcher_main, DispatcherSettings(nats=nats_settings)),
            service(worker_main, WorkerSettings(nats=nats_settings)),
            service(aggregator_main, AggregatorSettings(nats=nats_settings)),
        ):
            # Nobody else ran the first layer: the drained worker finished it.
            assert sorted(await step_ids_succeeded(bus, "run-drain", 6))[:6] == [f"s0_{i}" for i in range(6)]
            final = await completed_event(bus, "run-drain", timeout_s=60)
    finally:
        for proc in (worker, dispatcher):
            if proc.poll() is None:
                proc.kill()
        await server.stop()
        await server.engine.close()
    assert final.summary.steps_succeeded == 12 and final.summary.retries_count == 0
    kinds = Counter((e.step_id, e.kind) for e in await read_step_events(bus.js, "run-drain"))
    assert all(kinds[s.id, "started"] == 1 for s in plan.steps), kinds  # no step ran twice
