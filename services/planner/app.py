"""The planner process: a faststream subscriber on TASKS (`swarm.controlplane`) that publishes RunPlanned / RunRejected."""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
from faststream import FastStream
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from services.planner.intake import TaskRejected, describe, parse_task, plan_reason, reason, resolve_plan_ref
from services.planner.planning import LLMFailed, PlanOutcome, goal_of, plan_for_task
from services.planner.settings import PlannerSettings
from swarm.bus import Bus, ConsumerSpec, Reject, Retry
from swarm.contracts import (
    ERROR_MAX_CHARS,
    MESSAGE_BODY_MAX_BYTES,
    PLAN_INLINE_MAX_BYTES,
    PLANNER_CONSUMER,
    RUN_INDEX_BUCKET,
    TASKS,
    InferenceRequest,
    Keys,
    MsgIds,
    PlanSource,
    RejectionCode,
    RejectionReason,
    RunAccepted,
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStatus,
    Subjects,
    TaskSubmission,
    cut,
    record_goal,
)
from swarm.controlplane import ControlPlane
from swarm.dag import PlanError
from swarm.inference import InferenceClient
from swarm.payloads import PlanStore, plan_bytes

log = logging.getLogger(__name__)

SERVICE = "planner"


def consumer_spec(settings: PlannerSettings) -> ConsumerSpec:
    """The planner's durable pull consumer on TASKS."""
    return ConsumerSpec(
        stream=TASKS,
        durable=PLANNER_CONSUMER,
        filter_subjects=(Subjects.TASKS_ALL,),
        ack_wait_s=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
    )


class Planner:
    """Plans one task message end to end: parse, plan, publish. Acks are `swarm.bus.verdict`'s decision."""

    def __init__(self, settings: PlannerSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.inference = InferenceClient(bus.nc, bus.wait_reconnected)
        self.plans = PlanStore(bus.js)
        self.counts = {"planned": 0, "rejected": 0, "template_fallbacks": 0, "skipped": 0}
        # The gateway's backend, as its replies name it: what model_capability 'auto' goes by. Until the first
        # reply it is unknown, and the small-model schema (which any model can fill) is used.
        self.gateway_backend: str | None = None

    def details(self) -> dict[str, Any]:
        """What the health probe reports."""
        return dict(self.counts)

    async def complete(self, request: InferenceRequest) -> str:
        """One planning completion from the gateway; InferenceError when it is absent."""
        response = await self.inference.complete(request, timeout_s=self.settings.llm_timeout_s)
        self.gateway_backend = response.backend or self.gateway_backend
        if not response.ok:
            raise LLMFailed(response.error or "no completion")
        return response.content

    async def handle(self, msg: Msg) -> None:
        """Handle one task; raises Reject once a rejection is recorded, Retry on a NATS outage."""
        try:
            await self._handle(msg)
        except (nats.errors.Error, TimeoutError) as exc:
            # Publishing failed (NATS away or slow): the task is redelivered, and the RUNS
            # de-duplication window (msg id '<run_id>.planned') absorbs a second publish.
            raise Retry(f"{type(exc).__name__}: {exc}", delay_s=self.settings.retry_delay_s) from exc

    async def _handle(self, msg: Msg) -> None:
        index = await self.bus.kv(RUN_INDEX_BUCKET)
        try:
            task = parse_task(msg.data, msg.subject, msg.headers)
            if task.plan_ref is not None and await self._already_handled(index, task.run_id):
                return  # checked first: a plan read again for a redelivery could be gone by now
            task = await resolve_plan_ref(task, self.plans)
        except TaskRejected as exc:
            if await self._already_handled(index, exc.run_id):
                raise Reject(f"malformed task for known run {exc.run_id}: {exc.error}") from exc
            await self._reject(exc.run_id, exc.tenant, exc.reasons)
            raise Reject(exc.error) from exc
        if await self._already_handled(index, task.run_id):
            return  # a redelivery after the run was planned (or rejected): nothing left to do
        await self._accept(task)
        try:
            complete = self.complete if self.settings.llm_enabled else None
            outcome = await plan_for_task(task, self.settings, complete, self.gateway_backend)
        except PlanError as exc:
            why = plan_reason(exc, explicit=task.plan is not None)
            await self._reject(task.run_id, task.tenant, (why,))
            raise Reject(describe((why,))) from exc
        event = planned_event(task, outcome)
        if len(plan_bytes(outcome.plan)) > PLAN_INLINE_MAX_BYTES:
            event = event.model_copy(update={"plan": None, "plan_ref": await self.plans.put(outcome.plan)})
        payload = event.model_dump_json().encode()
        if len(payload) > MESSAGE_BODY_MAX_BYTES:
            # Deterministic: retrying cannot make it fit, so the run is rejected rather than redelivered.
            too_large = reason(
                "/plan" if task.plan is not None else "", RejectionCode.TOO_LARGE,
                f"the planned run is {len(payload)} bytes, over the {MESSAGE_BODY_MAX_BYTES} a message may carry",
            )  # fmt: skip
            await self._reject(task.run_id, task.tenant, (too_large,))
            raise Reject(describe((too_large,)))
        await self.bus.js.publish(
            Subjects.run_event(task.tenant, task.run_id, event.kind), payload,
            headers={"Nats-Msg-Id": MsgIds.run_event(task.run_id, event.kind)},
            timeout=self.settings.nats.request_timeout_s,
        )  # fmt: skip
        self.counts["planned"] += 1
        if outcome.source is PlanSource.TEMPLATE and task.pattern is None:
            self.counts["template_fallbacks"] += 1
        log.info(
            "planned run %s: %s%s, %d agents, %d steps%s", task.run_id, outcome.source.value,
            f" ({outcome.llm_schema})" if outcome.llm_schema else "", len(outcome.plan.agents),
            len(outcome.plan.steps), f" ({outcome.note})" if outcome.note else "",
        )  # fmt: skip

    async def _already_handled(self, index: KeyValue, run_id: str) -> bool:
        """Whether the run index (the recorder derives it from RUNS) holds this run: this delivery is a repeat.

        The index trails RUNS by a moment; a repeat inside that moment publishes again under the same
        msg id ('<run_id>.planned'), which RUNS' de-duplication window drops."""
        try:
            entry = await index.get(Keys.run_record(run_id))
        except KeyNotFoundError:
            return False
        if entry.value is None:
            return False
        try:
            status = RunRecord.model_validate_json(entry.value).status
        except ValidationError:
            log.warning("run %s: unreadable run index record; planning anyway", run_id)
            return False
        if status is RunStatus.PLANNING:  # written by earlier versions, before planning
            return False
        log.info("run %s is already %s; delivery ignored", run_id, status.value)
        self.counts["skipped"] += 1
        return True

    async def _accept(self, task: TaskSubmission) -> None:
        """Say the run exists before planning it (minutes, with an LLM): the run index shows it as planning."""
        event = RunAccepted(
            run_id=task.run_id,
            tenant=task.tenant,
            goal=record_goal(goal_of(task)),
            submitted_at=task.submitted_at,
        )
        await self.bus.publish(
            Subjects.run_event(task.tenant, task.run_id, event.kind),
            event,
            MsgIds.run_event(task.run_id, event.kind),
        )

    async def _reject(self, run_id: str, tenant: str, reasons: tuple[RejectionReason, ...]) -> None:
        error = cut(describe(reasons), ERROR_MAX_CHARS)
        event = RunRejected(run_id=run_id, tenant=tenant, error=error, reasons=reasons)
        await self.bus.publish(
            Subjects.run_event(tenant, run_id, event.kind), event, MsgIds.run_event(run_id, event.kind)
        )
        self.counts["rejected"] += 1
        log.warning("rejected run %s: %s", run_id, cut(error, 500))


def planned_event(task: TaskSubmission, outcome: PlanOutcome) -> RunPlanned:
    """The RunPlanned event of a task's plan; run settings are copied from the task."""
    return RunPlanned(
        run_id=task.run_id,
        tenant=task.tenant,
        goal=goal_of(task),
        plan=outcome.plan,
        agents_count=len(outcome.plan.agents),
        steps_count=len(outcome.plan.steps),
        source=outcome.source,
        note=outcome.note,
        llm_schema=outcome.llm_schema,
        priority=task.priority,
        policy=task.policy,
        quorum=task.quorum,
        submitted_at=task.submitted_at,
    )


class PlannerService:
    """The planner on the control plane: a faststream subscriber on TASKS, on the service's one connection."""

    def __init__(self, settings: PlannerSettings) -> None:
        self.settings = settings
        self.planner: Planner | None = None
        self.control = ControlPlane(settings.nats, SERVICE, settings.graceful_timeout_s)
        self.control.subscribe(
            consumer_spec(settings), self.on_task, concurrency=settings.concurrency,
            fetch_timeout_s=settings.fetch_timeout_s, heartbeat_s=settings.ack_wait_s / 3,
            description="Submitted tasks, planned into RunPlanned or rejected with RunRejected.",
        )  # fmt: skip

    async def on_task(self, msg: Msg) -> None:
        """Every task message: the raw bytes are validated by the planner itself, so bad input is rejected."""
        assert self.planner is not None, "the subscriber starts after on_startup"
        await self.planner.handle(msg)

    async def on_startup(self) -> None:
        """Connected and provisioned: the planner, before the subscriber starts."""
        assert self.control.bus is not None
        self.planner = Planner(self.settings, self.control.bus)

    def details(self) -> dict[str, Any]:
        """What the health probe reports."""
        return self.planner.details() if self.planner else {}

    def app(self) -> FastStream:
        """The faststream application: SIGTERM stops the subscriber, waits for in-flight tasks, then closes."""
        return self.control.app(self.on_startup, self.details)
