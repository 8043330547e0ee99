"""The Python SDK: submit tasks, follow their runs, cancel them, list runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import nats
import nats.errors
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NoStreamResponseError, NotFoundError
from pydantic import ValidationError

from swarm.bus import Bus, identity_options
from swarm.contracts import (
    DEFAULT_TENANT,
    EVENTS,
    MESSAGE_BODY_MAX_BYTES,
    PLAN_INLINE_MAX_BYTES,
    RECORDER_CONSUMER,
    RUN_EVENT,
    RUN_INDEX_BUCKET,
    RUNS,
    TERMINAL_RUN_EVENTS,
    Plan,
    PlanPattern,
    RunCancelRequested,
    RunEvent,
    RunEventKind,
    RunPlanned,
    RunPolicy,
    RunRecord,
    StepEvent,
    StepEventBatch,
    Subjects,
    TaskSubmission,
)
from swarm.payloads import PlanStore, PlanUnavailable, plan_bytes
from swarm.schemas import describe_validation_error
from swarm.settings import NatsSettings

log = logging.getLogger(__name__)
WATCH_HEARTBEAT_S = 2.0  # a run watcher missing three heartbeats re-creates its consumer
RUNS_LOOK_BACK_S = 3600.0  # `runs` first reads the index's changes of the last hour; widened 4x while too few
RUNS_LOOK_BACKS = 12  # 4**11 hours: past that, the whole index has been read


class StackNotRunning(RuntimeError):
    """Nothing answers at the NATS URL, or the swarm streams are missing."""


class MessageTooLarge(ValueError):
    """A message over what NATS carries, even with its plan sent by reference (e.g. a huge goal or labels)."""


async def read_step_events(
    js: JetStreamContext, run_id: str, idle_s: float = 1.0, tenant: str = "*"
) -> list[StepEvent]:
    """The run's step events from the EVENTS stream (an ordered consumer read to its end); its tenant, when
    given, narrows the subject to what a tenant-scoped reader may read."""
    subject = Subjects.run_step_events(tenant, run_id)
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events: list[StepEvent] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except (TimeoutError, nats.errors.TimeoutError):
                return events
            if msg.subject == Subjects.step_event_batch(*Subjects.scope_of(msg.subject)):
                events.extend(StepEventBatch.model_validate_json(msg.data).events)
            else:
                events.append(StepEvent.model_validate_json(msg.data))
            if msg.metadata.num_pending == 0:
                return events
    finally:
        await sub.unsubscribe()


def parse_run_event(subject: str, data: bytes, run_id: str) -> RunEvent | None:
    """The run event a message on the run's subject carries; None (logged) for anything else.

    A tenant may publish on its own runs' subjects (`.cancel`), so what arrives there is not trusted:
    it must parse as a run event of this run whose kind is the subject's last token.
    """
    try:
        event = RUN_EVENT.validate_json(data)
    except ValidationError as exc:
        why = describe_validation_error(exc, max_problems=1)
        log.warning("skipped a message on %s: not a run event (%s)", subject, why)
        return None
    if event.run_id != run_id or subject.rsplit(".", 1)[-1] != event.kind:
        log.warning("skipped a message on %s: not a run event of this run (%s of %s)", subject, event.kind, event.run_id)
        return None
    return event


def new_run_id() -> str:
    """A time-ordered, unique run id."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class SwarmClient:
    """A connection to a Swarm deployment."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.plans = PlanStore(bus.js)
        # Why the plans store cannot be reached from this identity (a tenant account), once found out: then
        # plans go inline and followers get references unresolved, without waiting on it again.
        self.plans_unreachable: Exception | None = None

    @classmethod
    async def connect(
        cls, settings: NatsSettings | None = None, url: str | None = None, connect_timeout_s: float = 3.0
    ) -> SwarmClient:
        """Connect; raise StackNotRunning with a hint when nothing listens."""
        settings = settings or NatsSettings()
        if url:
            settings = settings.model_copy(update={"url": url})
        async def quiet(_: Exception) -> None:  # connection errors surface as StackNotRunning instead
            pass

        try:
            # Give up on the first connection quickly (one retry per server: with -1, nats-py would retry a
            # refused connection until the timeout), but reconnect forever once connected (set below), so a
            # follow survives a NATS restart.
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=settings.url.split(","), name="swarm-client", connect_timeout=2,
                    max_reconnect_attempts=1, reconnect_time_wait=0.5, error_cb=quiet, **identity_options(settings),
                ),
                timeout=connect_timeout_s,
            )  # fmt: skip
        except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
            raise StackNotRunning(
                f"no NATS server at {settings.url}: start the local stack with `swarm up` "
                "(or give --nats-url of a running deployment)"
            ) from exc
        nc.options["max_reconnect_attempts"] = -1
        return cls(Bus(nc, settings))

    async def close(self) -> None:
        """Close the connection."""
        await self.bus.nc.close()

    async def __aenter__(self) -> SwarmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(
        self,
        goal: str | None = None,
        *,
        plan: Plan | None = None,
        tenant: str = DEFAULT_TENANT,
        pattern: PlanPattern | None = None,
        n_agents: int | None = None,
        policy: RunPolicy = RunPolicy.FAIL_FAST,
        quorum: float = 0.95,
        priority: int = 0,
        run_id: str | None = None,
    ) -> str:
        """Submit a goal (or an explicit plan); return the run id."""
        task = TaskSubmission(
            run_id=run_id or new_run_id(), tenant=tenant, goal=goal, plan=plan, pattern=pattern,
            n_agents=n_agents, policy=policy, quorum=quorum, priority=priority,
        )  # fmt: skip
        return await self.submit_task(task)

    async def submit_task(self, task: TaskSubmission) -> str:
        """Publish a task; the run id doubles as the idempotency key.

        A plan over PLAN_INLINE_MAX_BYTES of JSON is stored in the plans object store first and sent as a
        `plan_ref`; a message still too large raises MessageTooLarge (never a publish traceback).
        """
        try:
            if task.plan is not None and len(plan_bytes(task.plan)) > PLAN_INLINE_MAX_BYTES and not self.plans_unreachable:
                try:
                    task = task.model_copy(update={"plan": None, "plan_ref": await self.plans.put(task.plan)})
                except (NotFoundError, nats.errors.Error) as exc:
                    # A tenant account does not reach the services' plans store (yet): the plan goes inline,
                    # and the planner stores it by reference for the rest of the run.
                    self.plans_unreachable = exc
            store_unreachable = self.plans_unreachable if task.plan is not None else None
            payload = task.model_dump_json().encode()
            if len(payload) > MESSAGE_BODY_MAX_BYTES:
                why = (
                    f"the plans store is out of this identity's reach ({type(store_unreachable).__name__}), "
                    "so the plan must fit one message"
                    if store_unreachable
                    else "its plan travels by reference already: shorten the goal or the labels"
                )
                raise MessageTooLarge(
                    f"the task is {len(payload):,} bytes, over the {MESSAGE_BODY_MAX_BYTES:,} a message may carry ({why})"
                )
            await self.bus.publish_bytes(Subjects.task(task.tenant), payload, {"Nats-Msg-Id": task.run_id})
        except (nats.errors.NoRespondersError, NoStreamResponseError, NotFoundError) as exc:
            raise StackNotRunning("the TASKS stream or the plans store does not exist: is the stack up (`swarm up`)?") from exc
        except nats.errors.MaxPayloadError as exc:  # a server configured with a max_payload under ours
            raise MessageTooLarge(f"the NATS server refuses a message this large: {exc}") from exc
        return task.run_id

    async def resolved(self, event: RunEvent) -> RunEvent:
        """A run event with a plan by reference made inline (other events as they are)."""
        if isinstance(event, RunPlanned) and event.plan is None and not self.plans_unreachable:
            try:
                return await self.plans.resolved(event)
            except PlanUnavailable as exc:
                log.warning("run %s: the plan could not be read: %s", event.run_id, exc)
            except nats.errors.Error as exc:  # denied to this identity (a tenant account): no use asking again
                self.plans_unreachable = exc
                log.warning("run %s: the plans store is out of reach, the plan stays a reference: %s", event.run_id, exc)
        return event

    async def events(self, run_id: str, tenant: str = DEFAULT_TENANT) -> AsyncIterator[RunEvent]:
        """Every lifecycle event of the run from its start, until a terminal one.

        Read through a named push consumer filtered to the run: the one kind a tenant's NATS user may
        create (`swarm.ops.security`), unlike nats-py's ordered consumer. Like that one it is re-created
        after the last event seen when its heartbeats stop (a NATS restart drops it).
        """
        last_seq = 0
        sub = await self._watch(tenant, run_id, after_seq=last_seq)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=WATCH_HEARTBEAT_S * 3)
                except nats.errors.TimeoutError:
                    with contextlib.suppress(nats.errors.Error, TimeoutError):  # NATS away: try again later
                        replaced, sub = sub, await self._watch(tenant, run_id, after_seq=last_seq)
                        await replaced.unsubscribe()  # the old consumer, if alive, loses interest and expires
                    continue
                if not msg.data:  # an idle heartbeat, or a flow-control request to answer
                    if msg.reply:
                        await msg.respond(b"")
                    continue
                if msg.metadata.sequence.stream <= last_seq:
                    continue  # delivered again by a re-created consumer
                last_seq = msg.metadata.sequence.stream
                event = parse_run_event(msg.subject, msg.data, run_id)
                if event is None:
                    continue
                yield await self.resolved(event)
                if event.kind in TERMINAL_RUN_EVENTS:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _watch(
        self, tenant: str, run_id: str, after_seq: int = 0, policy: DeliverPolicy = DeliverPolicy.ALL
    ) -> Subscription:
        """A new inbox subscription, and a consumer delivering the run's events after `after_seq` to it."""
        return (await self._watch_with_info(tenant, run_id, after_seq, policy))[0]

    async def _watch_with_info(
        self, tenant: str, run_id: str, after_seq: int = 0, policy: DeliverPolicy = DeliverPolicy.ALL
    ) -> tuple[Subscription, ConsumerInfo]:
        nc = self.bus.nc
        sub = await nc.subscribe(nc.new_inbox())
        config = ConsumerConfig(
            name=f"watch-{secrets.token_hex(8)}", filter_subject=Subjects.run_all(tenant, run_id),
            deliver_subject=sub.subject, ack_policy=AckPolicy.NONE, flow_control=True,
            idle_heartbeat=WATCH_HEARTBEAT_S, mem_storage=True, num_replicas=1, inactive_threshold=30.0,
            **({"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after_seq + 1} if after_seq
               else {"deliver_policy": policy}),
        )  # fmt: skip
        try:
            info = await nc.jsm().add_consumer(RUNS.name, config)
        except BaseException:
            await sub.unsubscribe()
            raise
        return sub, info

    async def latest_events(self, run_id: str, tenant: str = DEFAULT_TENANT, timeout_s: float = 5.0) -> list[RunEvent] | None:
        """The latest event of each kind of the run (what does not parse is skipped); None when the run has
        no event at all (an unknown run, or one not planned yet)."""
        sub, info = await self._watch_with_info(tenant, run_id, policy=DeliverPolicy.LAST_PER_SUBJECT)
        try:
            expected = info.num_pending + (info.delivered.consumer_seq if info.delivered else 0)
            if expected == 0:
                return None
            events, received = [], 0
            deadline = asyncio.get_running_loop().time() + timeout_s
            while received < expected:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=remaining)
                except nats.errors.TimeoutError:
                    break
                if not msg.data:
                    if msg.reply:
                        await msg.respond(b"")
                    continue
                received += 1
                event = parse_run_event(msg.subject, msg.data, run_id)
                if event is not None:
                    events.append(event)
            return sorted(events, key=lambda e: e.at)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def wait(self, run_id: str, tenant: str = DEFAULT_TENANT, timeout_s: float | None = None) -> RunEvent:
        """The run's terminal event (completed, failed, cancelled or rejected)."""

        async def last() -> RunEvent:
            async for event in self.events(run_id, tenant):
                if event.kind in TERMINAL_RUN_EVENTS:
                    return event
            raise RuntimeError("event stream ended without a terminal event")

        return await asyncio.wait_for(last(), timeout_s)

    async def step_events(self, run_id: str, idle_s: float = 1.0) -> list[StepEvent]:
        """Every step event of the run stored in the EVENTS stream so far, single or batched, in order."""
        return await read_step_events(self.bus.js, run_id, idle_s)

    async def recorder_backlog(self, timeout_s: float = 5.0) -> int | None:
        """Events in EVENTS the recorder has not yet stored (pending or unacked); None without a recorder consumer."""
        try:
            info = await self.bus.js.consumer_info(EVENTS.name, RECORDER_CONSUMER, timeout=timeout_s)
        except NotFoundError:
            return None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def wait_recorded(self, timeout_s: float = 120.0, poll_s: float = 0.5) -> None:
        """Until the recorder has stored every event published so far (its backlog is empty, or it has none)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while backlog := await self.recorder_backlog():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the recorder is still {backlog} events behind after {timeout_s:g}s")
            await asyncio.sleep(poll_s)

    async def cancel(self, run_id: str, tenant: str = DEFAULT_TENANT, reason: str = "cancelled by client") -> None:
        """Ask the dispatcher to cancel the run."""
        request = RunCancelRequested(run_id=run_id, tenant=tenant, reason=reason)
        await self.bus.publish(Subjects.run_event(tenant, run_id, RunEventKind.CANCEL), request)

    async def runs(self, limit: int = 50) -> list[RunRecord]:
        """The `limit` most recently submitted runs of the run index, newest first (see `recent_runs`)."""
        return await recent_runs(self.bus, limit)


def submitted(record: RunRecord) -> datetime:
    """When a run was submitted (when it was last indexed, for a rejected task that named no time)."""
    return record.submitted_at or record.updated_at


async def recent_runs(bus: Bus, limit: int, now: datetime | None = None) -> list[RunRecord]:
    """The `limit` most recently submitted runs, newest first, without reading every key of the index.

    The index's stream keeps each run's latest record, in the order of its last change; a run submitted
    after a time `since` changed after it too. So the records changed since `since` are read (an ordered
    read from a start time), and `since` moves back 4x at a time, reading only the part before what was
    read, until `limit` runs submitted after it are found or the whole index is read. `swarm runs` costs
    what changed in the look-back, not the size of the index.
    """
    stream = RUN_INDEX_BUCKET.stream
    try:
        state = (await bus.js.stream_info(stream)).state
    except NotFoundError:
        return []
    now = now or datetime.now(UTC)
    found: dict[str, tuple[int, RunRecord]] = {}
    before_seq = 0  # 0: read up to the present; else, stop before this sequence (read already)
    for look_back in range(RUNS_LOOK_BACKS):
        if not state.messages:
            break
        since = now - timedelta(seconds=RUNS_LOOK_BACK_S * 4**look_back)
        first_seq = await index_changes(bus, stream, since, before_seq, found)
        if sum(1 for _, record in found.values() if submitted(record) >= since) >= limit:
            break
        if first_seq is not None and first_seq <= state.first_seq:
            break  # the whole index is read
        before_seq = first_seq or before_seq or state.last_seq + 1
    records = sorted((record for _, record in found.values()), key=submitted, reverse=True)
    return records[:limit]


async def index_changes(
    bus: Bus, stream: str, since: datetime, before_seq: int, found: dict[str, tuple[int, RunRecord]]
) -> int | None:
    """Add to `found` the index records changed since `since` (before `before_seq` unless 0), by run; the
    stream sequence of the first one read, or None when there was none."""
    sub = await bus.nc.subscribe(bus.nc.new_inbox())
    config = ConsumerConfig(
        name=f"runs-{secrets.token_hex(8)}", filter_subject=RUN_INDEX_BUCKET.subjects,
        deliver_subject=sub.subject, ack_policy=AckPolicy.NONE, flow_control=True,
        idle_heartbeat=WATCH_HEARTBEAT_S, mem_storage=True, num_replicas=1, inactive_threshold=30.0,
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since,
    )  # fmt: skip
    first_seq: int | None = None
    try:
        pending = (await bus.js.add_consumer(stream, config)).num_pending
        while pending > 0:
            msg = await sub.next_msg(timeout=WATCH_HEARTBEAT_S * 3)
            if msg.headers and msg.headers.get("Status"):  # an idle heartbeat or a flow-control request
                if msg.reply:
                    await msg.respond(b"")
                continue
            seq, pending = msg.metadata.sequence.stream, msg.metadata.num_pending
            if before_seq and seq >= before_seq:
                break
            first_seq = seq if first_seq is None else first_seq
            if not msg.data:  # a delete marker
                continue
            try:
                record = RunRecord.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("unreadable run index record %s: %s", msg.subject, exc)
                continue
            if record.run_id not in found or found[record.run_id][0] < seq:
                found[record.run_id] = (seq, record)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return first_seq
