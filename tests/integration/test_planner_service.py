"""The planner service in-process against a real nats-server: plans, rejections, fallbacks, idempotency."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from services.planner.app import PlannerService
from services.planner.settings import PlannerSettings
from services.recorder.runindex import RunIndexer
from swarm.bus import Bus
from swarm.contracts import (
    DEFAULT_TENANT,
    GATEWAY_QUEUE_GROUP,
    PLANNER_CONSUMER,
    RUN_INDEX_BUCKET,
    RUNS,
    TASKS,
    AgentSpec,
    InferenceRequest,
    InferenceResponse,
    Plan,
    PlanPattern,
    PlanSource,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStatus,
    StepSpec,
    Subjects,
    TaskSubmission,
)
from swarm.ops.natsserver import NatsServer
from swarm.settings import NatsSettings
from tests.conftest import indexing

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture
async def planner(bus: Bus, nats_settings: NatsSettings, run_index: RunIndexer) -> AsyncIterator[PlannerService]:
    """The planner's faststream app, started in this event loop; no gateway is running; the run index's
    writer (the recorder's) runs beside it."""
    service = PlannerService(PlannerSettings(nats=nats_settings, llm_timeout_s=0.5, fetch_timeout_s=0.2))
    app = service.app()
    await app.start()
    yield service
    await app.stop()


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout_s: float = 10.0) -> T:
    """Poll `probe` until it returns something."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await probe()
        if value is not None:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def run_event(bus: Bus, tenant: str, run_id: str, kind: str) -> bytes:
    async def probe() -> bytes | None:
        try:
            return (await bus.js.get_last_msg(RUNS.name, Subjects.run_event(tenant, run_id, kind))).data
        except NotFoundError:
            return None

    return await eventually(probe)


async def in_hand(bus: Bus) -> int:
    """Wait until the planner holds a task (delivered, not settled yet)."""

    async def probe() -> int | None:
        return (await bus.js.consumer_info(TASKS.name, PLANNER_CONSUMER)).num_ack_pending or None

    return await eventually(probe)


async def run_record(bus: Bus, run_id: str, status: RunStatus) -> RunRecord:
    index = await bus.kv(RUN_INDEX_BUCKET)

    async def probe() -> RunRecord | None:
        try:
            record = RunRecord.model_validate_json((await index.get(run_id)).value or b"")
        except NotFoundError:
            return None
        return record if record.status is status else None

    return await eventually(probe)


async def tasks_left(bus: Bus) -> int:
    async def probe() -> int | None:
        return 0 if (await bus.js.stream_info(TASKS.name)).state.messages == 0 else None

    try:
        return await eventually(probe, timeout_s=3.0)
    except TimeoutError:
        return (await bus.js.stream_info(TASKS.name)).state.messages


async def submit(bus: Bus, task: TaskSubmission, msg_id: str | None = None) -> None:
    await bus.js.publish(
        Subjects.task(task.tenant), task.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id or task.run_id}
    )


def two_step_plan(cyclic: bool = False) -> Plan:
    return Plan(
        agents=(AgentSpec(id="a", role="researcher"), AgentSpec(id="b", role="writer")),
        steps=(
            StepSpec(id="s1", agent_id="a", instruction="find facts", depends_on=("s2",) if cyclic else ()),
            StepSpec(id="s2", agent_id="b", instruction="write them up", depends_on=("s1",)),
        ),
    )


async def test_explicit_plan_is_planned_and_indexed(bus: Bus, planner: PlannerService) -> None:
    task = TaskSubmission(run_id="run-explicit", tenant="acme", plan=two_step_plan(), priority=3, quorum=0.5)
    await submit(bus, task)
    event = RunPlanned.model_validate_json(await run_event(bus, "acme", task.run_id, "planned"))
    assert event.source is PlanSource.EXPLICIT and event.plan == task.plan
    assert (event.priority, event.quorum, event.submitted_at) == (3, 0.5, task.submitted_at)
    record = await run_record(bus, task.run_id, RunStatus.RUNNING)
    assert (record.tenant, record.steps_total, record.agents_count) == ("acme", 2, 2)
    assert await tasks_left(bus) == 0


@pytest.mark.parametrize(
    ("body", "msg_id", "run_id", "expected"),
    [
        (b'{"v": 1, "run_id": "run-empty-goal", "goal": ""}', "run-empty-goal", "run-empty-goal", ("/goal", "pattern")),
        (b"not json", "run-not-json", "run-not-json", ("", "json")),
        (b'{"v": 1, "run_id": "run-extra", "goal": "x", "colour": "red"}', "run-extra", "run-extra",
         ("/colour", "additionalProperties")),
        (b'{"v": 1, "run_id": "run-no-msg-id", "goal": "x"}', None, "run-no-msg-id", ("", "msg_id_missing")),
        (b'{"v": 1, "run_id": "run-naive", "goal": "x", "submitted_at": "2025-01-01T00:00:00"}', "run-naive",
         "run-naive", ("/submitted_at", "format")),
    ],
)  # fmt: skip
async def test_malformed_task_is_rejected_and_terminated(
    bus: Bus, planner: PlannerService, body: bytes, msg_id: str | None, run_id: str, expected: tuple[str, str]
) -> None:
    # A plain NATS client, no SDK: whatever bytes arrive must be answered, never redelivered forever.
    await bus.js.publish(Subjects.task(DEFAULT_TENANT), body, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
    event = RunRejected.model_validate_json(await run_event(bus, DEFAULT_TENANT, run_id, "rejected"))
    assert [(r.path, r.code.value) for r in event.reasons] == [expected]
    record = await run_record(bus, run_id, RunStatus.REJECTED)
    assert record.error == event.error
    assert await tasks_left(bus) == 0


async def test_cyclic_plan_is_rejected(bus: Bus, planner: PlannerService) -> None:
    task = TaskSubmission(run_id="run-cyclic", plan=two_step_plan(cyclic=True))
    await submit(bus, task)
    event = RunRejected.model_validate_json(await run_event(bus, DEFAULT_TENANT, task.run_id, "rejected"))
    assert "cycle" in event.error
    assert [(r.path, r.code.value) for r in event.reasons] == [("/plan/steps", "cycle")]
    await run_record(bus, task.run_id, RunStatus.REJECTED)
    assert await tasks_left(bus) == 0


async def test_goal_without_gateway_falls_back_to_the_template(bus: Bus, planner: PlannerService) -> None:
    task = TaskSubmission(run_id="run-goal", goal="Survey the history of the printing press", n_agents=3)
    await submit(bus, task)
    event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, task.run_id, "planned"))
    assert event.source is PlanSource.TEMPLATE and "gateway unavailable" in event.note
    assert event.plan.pattern is PlanPattern.MAP_REDUCE and len(event.plan.agents) == 4
    assert event.goal == task.goal
    record = await run_record(bus, task.run_id, RunStatus.RUNNING)
    assert record.steps_total == len(event.plan.steps)


async def test_requested_pattern_is_used(bus: Bus, planner: PlannerService) -> None:
    task = TaskSubmission(run_id="run-vote", goal="Is 91 prime?", pattern=PlanPattern.VOTE, n_agents=5)
    await submit(bus, task)
    event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, task.run_id, "planned"))
    assert event.plan.pattern is PlanPattern.VOTE and len(event.plan.steps) == 6


async def test_resubmitted_task_is_planned_once(bus: Bus, planner: PlannerService) -> None:
    task = TaskSubmission(run_id="run-twice", plan=two_step_plan())
    await submit(bus, task)
    await run_record(bus, task.run_id, RunStatus.RUNNING)
    # Past the TASKS de-duplication window (another msg id): the run index says it is done already.
    await submit(bus, task, msg_id="run-twice-again")
    assert await tasks_left(bus) == 0
    await eventually(lambda: _async(planner.planner.counts["skipped"] or None))  # type: ignore[union-attr]
    info = await bus.js.stream_info(RUNS.name, subjects_filter=Subjects.run_all(DEFAULT_TENANT, task.run_id))
    assert info.state.subjects == {
        Subjects.run_event(DEFAULT_TENANT, task.run_id, kind): 1 for kind in ("accepted", "planned")
    }  # each once: the repeat was not accepted again


async def test_health_probe_answers(bus: Bus, planner: PlannerService) -> None:
    reply = await bus.nc.request(Subjects.health("planner"), b"", timeout=2)
    assert json.loads(reply.data)["service"] == "planner"


async def test_the_planner_has_one_connection(nats_server: NatsServer, planner: PlannerService) -> None:
    # faststream's broker and the Bus (publishing, KV, health) share it: no second connection per replica.
    def connections() -> list[dict[str, object]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{nats_server.monitor_port}/connz", timeout=5) as reply:
            return list(json.loads(reply.read())["connections"])

    names = [c.get("name") for c in await asyncio.to_thread(connections)]
    assert names.count("planner") == 1, names


async def _async(value: T) -> T:
    return value


async def test_failed_publish_is_retried_not_terminated(bus: Bus, nats_settings: NatsSettings) -> None:
    service = PlannerService(PlannerSettings(nats=nats_settings, retry_delay_s=0.2, fetch_timeout_s=0.2))
    app = service.app()
    await app.start()
    try:
        await bus.js.delete_stream(RUNS.name)  # publishing the plan now fails: no stream takes the subject
        task = TaskSubmission(run_id="run-retried", plan=two_step_plan())
        await submit(bus, task)
        await in_hand(bus)
        await asyncio.sleep(0.5)
        await bus.provision(streams=[RUNS], buckets=[])
        event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, task.run_id, "planned"))
        assert event.run_id == task.run_id
        async with indexing(bus):  # on the new RUNS (its consumer went with the old one)
            await run_record(bus, task.run_id, RunStatus.RUNNING)
        assert await tasks_left(bus) == 0
    finally:
        await app.stop()


async def test_stop_finishes_in_flight_tasks(bus: Bus, nats_settings: NatsSettings) -> None:
    # The gateway is absent, so planning waits the whole LLM timeout: stop() must wait for it, not drop it.
    service = PlannerService(PlannerSettings(nats=nats_settings, llm_timeout_s=1.5, fetch_timeout_s=0.2))
    app = service.app()
    await app.start()
    task = TaskSubmission(run_id="run-in-flight", goal="Summarize the causes of the French revolution")
    await submit(bus, task)
    # Its handler has begun (it says the run is accepted before planning): delivered is not enough, since a
    # task fetched but not yet handed to a worker when stop() comes is left for redelivery, not handled.
    await run_event(bus, DEFAULT_TENANT, task.run_id, "accepted")
    await app.stop()
    event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, task.run_id, "planned"))
    assert event.source is PlanSource.TEMPLATE
    assert await tasks_left(bus) == 0


async def test_goal_is_planned_by_the_gateway_model(bus: Bus, planner: PlannerService) -> None:
    # A stand-in gateway on the real subject, naming a capable backend: the first call (backend not known
    # yet) gets the small-model schema, the second the full one, the third is answered with garbage.
    requests: list[InferenceRequest] = []
    subquestions = {
        "agents": [{"role": "zoologist", "instruction": "Describe how owls hunt at night."},
                   {"role": "ecologist", "instruction": "Explain where owls live and nest."}],
    }  # fmt: skip
    plan = {
        "agents": [{"id": "scout", "role": "researcher", "instructions": "dig"},
                   {"id": "pen", "role": "writer", "instructions": "write"}],
        "steps": [{"id": "find", "agent_id": "scout", "instruction": "find facts", "depends_on": []},
                  {"id": "write", "agent_id": "pen", "instruction": "write it", "depends_on": ["find"]}],
    }  # fmt: skip

    async def gateway(msg: Msg) -> None:
        request = InferenceRequest.model_validate_json(msg.data)
        requests.append(request)
        content = [json.dumps(subquestions), json.dumps(plan), "Sure! Here are some agents: ..."][len(requests) - 1]
        response = InferenceResponse(request_id=request.request_id, ok=True, content=content, backend="trtllm")
        await msg.respond(response.model_dump_json().encode())

    sub = await bus.nc.subscribe(Subjects.INFER, queue=GATEWAY_QUEUE_GROUP, cb=gateway)
    try:
        await submit(bus, TaskSubmission(run_id="run-small", goal="Write about owls"))
        event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, "run-small", "planned"))
        assert event.source is PlanSource.LLM and event.llm_schema == "sub-questions" and event.note == ""
        assert [a.role for a in event.plan.agents] == ["zoologist", "ecologist", "synthesizer"]
        assert requests[0].caller == "planner" and requests[0].json_schema and requests[0].run_id == "run-small"

        await submit(bus, TaskSubmission(run_id="run-llm", goal="Write about owls"))
        event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, "run-llm", "planned"))
        assert event.source is PlanSource.LLM and event.llm_schema == "full-plan"
        assert [s.id for s in event.plan.steps] == ["find", "write"]

        await submit(bus, TaskSubmission(run_id="run-llm-garbage", goal="Write about bats"))
        event = RunPlanned.model_validate_json(await run_event(bus, DEFAULT_TENANT, "run-llm-garbage", "planned"))
        assert event.source is PlanSource.TEMPLATE and "unusable" in event.note and event.llm_schema is None
    finally:
        await sub.unsubscribe()


async def test_long_planning_is_kept_alive_not_redelivered(bus: Bus, nats_settings: NatsSettings) -> None:
    # The LLM wait (no gateway) outlasts ack_wait twice over; a second, idle replica would pick the task
    # up again were it not for the busy replica's heartbeats.
    settings = PlannerSettings(nats=nats_settings, ack_wait_s=0.6, llm_timeout_s=1.5, fetch_timeout_s=0.2)
    apps = [PlannerService(settings).app() for _ in range(2)]
    for app in apps:
        await app.start()
    try:
        task = TaskSubmission(run_id="run-slow", goal="Plan a garden")
        await submit(bus, task)
        await run_event(bus, DEFAULT_TENANT, task.run_id, "planned")
        info = await bus.js.consumer_info(TASKS.name, PLANNER_CONSUMER)
        assert info.num_redelivered == 0 and info.delivered.consumer_seq == 1
    finally:
        for app in apps:
            await app.stop()
