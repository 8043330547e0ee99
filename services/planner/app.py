"""The planner process: a faststream pull subscriber on TASKS that publishes RunPlanned / RunRejected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import nats.errors
from faststream import AckPolicy, FastStream
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.security import NatsCredentials, NatsSecurity, NatsUserPassword
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from services.planner.intake import TaskRejected, describe, parse_task, plan_reason, reason, resolve_plan_ref
from services.planner.planning import LLMFailed, PlanOutcome, goal_of, plan_for_task
from services.planner.settings import PlannerSettings
from swarm.bus import Bus, ConsumerSpec, Reject, Retry, identity_options, settle
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
    RunPlanned,
    RunRecord,
    RunRejected,
    RunStatus,
    Subjects,
    TaskSubmission,
    cut,
    record_goal,
)
from swarm.dag import PlanError
from swarm.inference import InferenceClient
from swarm.payloads import PlanStore, plan_bytes
from swarm.settings import NatsSettings

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
    """Plans one task message end to end: parse, plan, publish, index. Acks are `settle`'s decision."""

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
        heartbeat = asyncio.create_task(self._keep_alive(msg))
        try:
            await self._handle(msg)
        except (nats.errors.Error, TimeoutError) as exc:
            # Publishing or indexing failed (NATS away or slow): the task is redelivered, and the
            # RUNS de-duplication window (msg id '<run_id>.planned') absorbs a second publish.
            raise Retry(f"{type(exc).__name__}: {exc}", delay_s=self.settings.retry_delay_s) from exc
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the task is still being worked on, so a long LLM call is not redelivered."""
        while True:
            await asyncio.sleep(self.settings.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except nats.errors.Error as exc:
                log.debug("in_progress failed: %s", exc)

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
            await self._reject(index, exc.run_id, exc.tenant, exc.reasons, goal="")
            raise Reject(exc.error) from exc
        if await self._already_handled(index, task.run_id):
            return  # a redelivery after the run was planned (or rejected): nothing left to do
        revision = await self._index(index, task, RunStatus.PLANNING)
        try:
            complete = self.complete if self.settings.llm_enabled else None
            outcome = await plan_for_task(task, self.settings, complete, self.gateway_backend)
        except PlanError as exc:
            why = plan_reason(exc, explicit=task.plan is not None)
            await self._reject(index, task.run_id, task.tenant, (why,), goal=goal_of(task), task=task)
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
            await self._reject(index, task.run_id, task.tenant, (too_large,), goal=goal_of(task), task=task)
            raise Reject(describe((too_large,)))
        await self.bus.js.publish(
            Subjects.run_event(task.tenant, task.run_id, event.kind), payload,
            headers={"Nats-Msg-Id": MsgIds.run_event(task.run_id, event.kind)},
            timeout=self.settings.nats.request_timeout_s,
        )  # fmt: skip
        try:
            await self._index(index, task, RunStatus.RUNNING, outcome=outcome, last=revision)
        except KeyWrongLastSequenceError:
            log.info("run %s: index already moved on by another service", task.run_id)
        self.counts["planned"] += 1
        if outcome.source is PlanSource.TEMPLATE and task.pattern is None:
            self.counts["template_fallbacks"] += 1
        log.info(
            "planned run %s: %s%s, %d agents, %d steps%s", task.run_id, outcome.source.value,
            f" ({outcome.llm_schema})" if outcome.llm_schema else "", len(outcome.plan.agents),
            len(outcome.plan.steps), f" ({outcome.note})" if outcome.note else "",
        )  # fmt: skip

    async def _already_handled(self, index: KeyValue, run_id: str) -> bool:
        """Whether the run index holds this run past planning (so this delivery is a repeat)."""
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
        if status is RunStatus.PLANNING:
            return False
        log.info("run %s is already %s; delivery ignored", run_id, status.value)
        self.counts["skipped"] += 1
        return True

    async def _index(
        self,
        index: KeyValue,
        task: TaskSubmission,
        status: RunStatus,
        outcome: PlanOutcome | None = None,
        last: int | None = None,
    ) -> int:
        record = RunRecord(
            run_id=task.run_id,
            tenant=task.tenant,
            status=status,
            goal=record_goal(goal_of(task)),
            steps_total=len(outcome.plan.steps) if outcome else 0,
            agents_count=len(outcome.plan.agents) if outcome else 0,
            submitted_at=task.submitted_at,
        )
        value = record.model_dump_json().encode()
        if last is None:
            return await index.put(Keys.run_record(task.run_id), value)
        # Only move PLANNING -> RUNNING: a fast dispatcher may have written a later status already.
        return await index.update(Keys.run_record(task.run_id), value, last=last)

    async def _reject(
        self,
        index: KeyValue,
        run_id: str,
        tenant: str,
        reasons: tuple[RejectionReason, ...],
        goal: str,
        task: TaskSubmission | None = None,
    ) -> None:
        error = cut(describe(reasons), ERROR_MAX_CHARS)
        event = RunRejected(run_id=run_id, tenant=tenant, error=error, reasons=reasons)
        await self.bus.publish(Subjects.run_event(tenant, run_id, event.kind), event, MsgIds.run_event(run_id, event.kind))
        record = RunRecord(
            run_id=run_id,
            tenant=tenant,
            status=RunStatus.REJECTED,
            goal=record_goal(goal),
            submitted_at=task.submitted_at if task else None,
            error=error,
        )
        await index.put(Keys.run_record(run_id), record.model_dump_json().encode())
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


def broker_identity(settings: NatsSettings) -> dict[str, Any]:
    """faststream's form of `identity_options`: the same user, credentials, TLS (client certificate
    included) and inbox prefix as every other connection, as NatsBroker keyword arguments."""
    options = identity_options(settings)
    context: ssl.SSLContext | None = options.get("tls")
    identity: dict[str, Any] = {"inbox_prefix": options["inbox_prefix"]} if "inbox_prefix" in options else {}
    if settings.creds_file:
        identity["security"] = NatsCredentials.from_file(settings.creds_file, ssl_context=context)
    elif settings.user:
        identity["security"] = NatsUserPassword(options["user"], options["password"] or "", ssl_context=context)
    elif context is not None:
        identity["security"] = NatsSecurity(ssl_context=context)
    return identity


class PlannerService:
    """The faststream broker and app, and the nats-py Bus beside it (provisioning, KV, publishing, health)."""

    def __init__(self, settings: PlannerSettings) -> None:
        self.settings = settings
        self.bus: Bus | None = None
        self.planner: Planner | None = None
        identity = broker_identity(settings.nats)
        self.broker = NatsBroker(
            settings.nats.url.split(","),
            name=SERVICE,
            **identity,
            max_reconnect_attempts=-1,  # outlive a restarting nats-server, as Bus does
            js_options={"timeout": settings.nats.request_timeout_s},
            graceful_timeout=settings.graceful_timeout_s,
            logger=logging.getLogger(f"{__name__}.broker"),  # the service's log format, not faststream's own
        )
        self.broker.subscriber(
            Subjects.TASKS_ALL,
            # The stream is provisioned by Bus.provision; faststream must never create or alter it.
            stream=JStream(TASKS.name, declare=False),
            durable=PLANNER_CONSUMER,
            # Only used if the consumer is missing; on_startup provisions it first (same settings).
            config=ConsumerConfig(
                durable_name=PLANNER_CONSUMER, ack_wait=settings.ack_wait_s, max_deliver=settings.max_deliver
            ),
            pull_sub=PullSub(batch_size=settings.concurrency, timeout=settings.fetch_timeout_s),
            # faststream gives a pull subscription its own inbox prefix (`_INBOX.` by default), not the broker's.
            inbox_prefix=f"{identity.get('inbox_prefix', '_INBOX')}.".encode(),
            # settle() acks, naks or terms: faststream's default would terminate a task whose handler raised.
            ack_policy=AckPolicy.MANUAL,
            no_reply=True,
            title="planner/tasks",
            description="Submitted tasks, planned into RunPlanned or rejected with RunRejected.",
        )(self.on_task)

    async def on_task(self, msg: NatsMessage) -> None:
        """Every task message: the raw bytes are validated by the planner itself, so bad input is rejected."""
        assert self.planner is not None, "the subscriber starts after on_startup"
        await settle(msg.raw_message, self.planner.handle)

    async def on_startup(self) -> None:
        """Connect the Bus, provision streams, buckets and the consumer: before the broker subscribes."""
        self.bus = await Bus.connect(self.settings.nats, SERVICE)
        created = await self.bus.provision()
        if created:
            log.info("provisioned %s", ", ".join(created))
        await self.bus.ensure_consumer(consumer_spec(self.settings))
        self.planner = Planner(self.settings, self.bus)

    async def after_startup(self) -> None:
        """Answer health probes once tasks are being consumed."""
        assert self.bus is not None and self.planner is not None
        await self.bus.serve_health(SERVICE, self.planner.details)
        await self.bus.nc.flush()  # the probe subscription is on the server once started: no early 'no responders'
        log.info("consuming %s as %s", TASKS.name, PLANNER_CONSUMER)

    async def after_shutdown(self) -> None:
        """The broker has drained in-flight tasks; close the Bus last (it publishes their results)."""
        if self.bus is not None:
            await self.bus.close()
            self.bus = None

    def app(self) -> FastStream:
        """The faststream application: SIGTERM stops the subscriber, waits for in-flight tasks, then closes."""
        return FastStream(
            self.broker,
            logger=log,
            on_startup=[self.on_startup],
            after_startup=[self.after_startup],
            after_shutdown=[self.after_shutdown],
        )
