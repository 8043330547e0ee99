"""NATS connection, idempotent JetStream provisioning, and the one place that decides ack/nak/term."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ClusterInfo,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BucketNotFoundError, NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from pydantic import BaseModel, ValidationError

from swarm.contracts import ALL_BUCKETS, ALL_STREAMS, BucketSpec, Retention, StreamSpec, Subjects
from swarm.settings import NatsSettings

log = logging.getLogger(__name__)

H = TypeVar("H")

# JetStream's "no suitable peers for placement": a peer is offline, or one the meta leader has not heard from
# since it started (a cluster starting or restarting node by node).
NO_SUITABLE_PEERS = 10005

class ProvisioningConflict(RuntimeError):
    """A stream or consumer exists with a configuration other than ours; we never overwrite it."""


class PeersUnavailable(RuntimeError):
    """A replicated stream could not be placed: too few of its cluster's peers were online in time."""


class PublishNotAcknowledged(TimeoutError):
    """A stream did not acknowledge a publish in time (NATS away or restarting); the caller retries."""


class Retry(Exception):
    """Raised by a handler: redeliver this message later.

    `bounded`: the wait may never end (a result for a run nobody knows), so the consumer's
    `give_up_after` applies; unbounded retries wait out outages, however long.
    """

    def __init__(self, reason: str, delay_s: float = 1.0, bounded: bool = False) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.bounded = bounded


class Reject(Exception):
    """Raised by a handler: this message can never succeed; terminate it (the handler records why)."""


def _stream_config(spec: StreamSpec, settings: NatsSettings) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.WORK_QUEUE if spec.retention is Retention.WORK_QUEUE else RetentionPolicy.LIMITS,
        storage=StorageType.FILE if settings.stream_storage == "file" else StorageType.MEMORY,
        num_replicas=settings.stream_replicas,
        max_age=spec.max_age_s or None,
        duplicate_window=spec.duplicate_window_s,
    )


async def wait_for_streams_replicated(js: JetStreamContext, streams: Iterable[str], timeout_s: float) -> None:
    """Wait until every replicated stream has elected a leader and each of its replicas is current.

    Without a leader a publish to a stream just created finds no responder (the first KV put of a starting
    service failed so); a replica still catching up makes its node answer unhealthy (`swarm status`)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    for name in streams:
        lagging = "no leader"
        while True:
            try:
                info = await js.stream_info(name)
                if info.cluster is None:
                    break
                lagging = _lagging_replicas(info.cluster)
                if not lagging:
                    break
            except (nats.errors.TimeoutError, APIError):
                pass  # no leader to answer yet
            if asyncio.get_running_loop().time() > deadline:
                raise PublishNotAcknowledged(f"stream {name} not replicated after {timeout_s:.0f}s: {lagging}")
            await asyncio.sleep(0.1)


def _lagging_replicas(cluster: ClusterInfo) -> str:
    """Why a replicated stream is not ready yet, or "" when its leader and every replica are current."""
    if not cluster.leader:
        return "no leader"
    behind = [peer.name or "?" for peer in cluster.replicas or [] if not peer.current or peer.offline]
    return f"replicas not current: {', '.join(behind)}" if behind else ""


def _conflicts(wanted: StreamConfig, found: StreamConfig) -> list[str]:
    """The fields where an existing stream differs from what we would create."""
    diffs = []
    for field in ("subjects", "retention", "storage", "num_replicas"):
        want, have = getattr(wanted, field), getattr(found, field)
        if field == "subjects":
            want, have = sorted(want or []), sorted(have or [])
        if want != have:
            diffs.append(f"{field}: wanted {want!r}, found {have!r}")
    return diffs


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer as this project provisions it."""

    stream: StreamSpec
    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait_s: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 20_000
    deliver_all: bool = True
    # A message whose handler keeps failing (a bug, a poison payload) is terminated on this delivery;
    # outages and plain `Retry`s never count (they end only at the server's max_deliver, if any).
    give_up_after: int = 10


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    """The JetStream configuration of a durable consumer: the one place it is written (Bus and faststream)."""
    return ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        deliver_policy=DeliverPolicy.ALL if spec.deliver_all else DeliverPolicy.NEW,
        filter_subjects=list(spec.filter_subjects) if len(spec.filter_subjects) > 1 else None,
        filter_subject=spec.filter_subjects[0] if len(spec.filter_subjects) == 1 else None,
    )


_STATUS_HEADER = "Status"


class Puller:
    """A low-latency reader of a durable pull consumer: returns as soon as messages are there.

    nats-py's `fetch(batch)` keeps waiting, after the first message of a pull request, for the
    rest of the batch until its timeout: a step published into a half-filled request sat up to a
    second in the worker's hands. Here one pull request (batch = the reader's free capacity) stays
    open and its messages are handed out as they arrive; a new request is made only when the last
    one is exhausted, so messages held never exceed the capacity the reader asked for.
    """

    def __init__(self, nc: NatsClient, stream: str, durable: str) -> None:
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._msgs: list[Msg] = []
        self._waiter: asyncio.Future[None] | None = None  # what a waiting fetch sleeps on
        self._drained: asyncio.Future[None] | None = None  # what `fetch_ready` sleeps on: its request's end
        self._open_until = 0.0  # monotonic deadline of the open request; 0 when none is open
        self._left = 0  # messages the open request may still deliver
        self._sub: Any = None

    async def start(self) -> Puller:
        self._sub = await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=1_000_000)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.data and msg.headers and _STATUS_HEADER in msg.headers:
            self._open_until = 0.0  # 404/408/409: the request is over
        else:
            self._msgs.append(msg)
            self._left -= 1
            if self._left <= 0:
                self._open_until = 0.0
        self._wake()
        if self._open_until == 0.0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 - nats-py fetch signature
        """Up to `batch` messages: those already here, else the first to arrive within `timeout`."""
        loop = asyncio.get_running_loop()
        if not self._msgs:
            if self._open_until <= loop.time():
                self._left = batch
                self._open_until = loop.time() + timeout
                request = {"batch": batch, "expires": int(timeout * 1e9)}
                await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
            # One future and one timer per wait (not wait_for's task around an Event): a reader that takes
            # steps one at a time waits once per step. The server's 408 at the request's expiry wakes it
            # too; the timer only guards against a request lost with its connection.
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(max(0.0, self._open_until - loop.time()) + 0.05, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            await asyncio.sleep(0)  # let the rest of a burst land before handing out
        msgs, self._msgs = self._msgs[:batch], self._msgs[batch:]
        if not msgs:
            raise TimeoutError
        return msgs

    async def fetch_ready(self, batch: int, timeout: float) -> list[Msg]:  # noqa: ASYNC109 - as fetch
        """Up to `batch` of the messages the consumer holds now, in one burst; [] when it holds none.

        For a reader that lingers between reads (the recorder): one no_wait request, read to its end (the
        server's 404 after the last message), so no request stays open to wake the reader message by
        message while it waits. Where a request is still open, its messages are taken as `fetch` does.
        """
        loop = asyncio.get_running_loop()
        if self._msgs or self._open_until > loop.time():
            try:
                return await self.fetch(batch, timeout)
            except TimeoutError:
                return []
        self._left = batch
        self._open_until = loop.time() + timeout
        self._drained = drained = loop.create_future()
        request = {"batch": batch, "no_wait": True, "expires": int(timeout * 1e9)}
        try:
            await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
            with contextlib.suppress(TimeoutError):  # a request lost with its connection: what came is kept
                await asyncio.wait_for(drained, timeout + 0.05)
        finally:
            self._drained = None
        msgs, self._msgs = self._msgs[:batch], self._msgs[batch:]
        return msgs

    async def unsubscribe(self) -> None:
        """Stop reading; messages received but never handed out go back at once (nak), the rest after ack_wait."""
        if self._sub is not None:
            await self._sub.unsubscribe()
        held, self._msgs = self._msgs, []
        for msg in held:
            await msg.nak()


class ReplyInbox:
    """Replies to many messages on one wildcard inbox subscription, matched by the token ending the subject.

    nats-py's `request` makes an inbox token, a future and a timer per call, and `publish_async` a task
    and a timer per message (its pending-window semaphore sits behind `asyncio.wait_for`): on the hot
    path that was a third of a dispatcher's CPU, and each publish became its own socket write. Here a
    request is one buffered write and one future, resolved by `resolve(msg, future)`.
    """

    def __init__(self, nc: NatsClient, resolve: Callable[[Msg, asyncio.Future[Any]], None]) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.waiting: dict[str, asyncio.Future[Any]] = {}
        self._resolve = resolve
        self._next_token = 0
        self._subscribed = False

    async def expect(self) -> tuple[str, str, asyncio.Future[Any]]:
        """A reply subject for one message, its token (to `forget` it), and the future its reply resolves."""
        if not self._subscribed:  # on first use: a Bus may wrap a connection made elsewhere
            self._subscribed = True
            await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_reply, pending_msgs_limit=1_000_000)
        token = str(self._next_token)
        self._next_token += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[token] = future
        return f"{self.prefix}.{token}", token, future

    def forget(self, token: str) -> None:
        """Stop waiting for a reply (timed out); a late one is dropped."""
        self.waiting.pop(token, None)

    def mark(self) -> int:
        """The token the next `expect` gets: `fail_before(mark)` later fails only earlier ones."""
        return int(self._next_token)

    def fail_before(self, mark: int, exc: Exception) -> int:
        """Fail every waiting future whose message went out before `mark` (their replies are lost); how many."""
        lost = [t for t in self.waiting if int(t) < mark]
        for token in lost:
            future = self.waiting.pop(token)
            if not future.done():
                future.set_exception(exc)
        return len(lost)

    def fail_all(self, exc: Exception) -> None:
        """Fail every waiting future (the connection was re-established: those replies are not coming)."""
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)

    async def _on_reply(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject[len(self.prefix) + 1 :], None)
        if future is not None and not future.done():
            self._resolve(msg, future)


async def wait_future(future: asyncio.Future[Any], timeout_s: float) -> Any:
    """Await a reply's future, at most `timeout_s` (TimeoutError): one timer and no task, where
    `asyncio.wait_for` (a task) or `asyncio.timeout` (a context) cost more on every message's path."""
    timer = asyncio.get_running_loop().call_later(timeout_s, _time_out, future)
    try:
        return await future
    finally:
        timer.cancel()


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def resolve_publish_ack(msg: Msg, future: asyncio.Future[None]) -> None:
    """A JetStream PubAck: the future succeeds, or fails with the stream's error."""
    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
        future.set_exception(NoStreamResponseError())  # no stream listens on the subject
    elif b'"error"' in msg.data:
        try:
            APIError.from_error(json.loads(msg.data)["error"])
        except APIError as exc:
            future.set_exception(exc)
    else:
        future.set_result(None)


def _kv_stream_config(bucket: BucketSpec, storage: StorageType, replicas: int) -> StreamConfig:
    """A KV bucket's stream as nats-py's `create_key_value` makes it, but without roll-up headers.

    With them, any user allowed to put one key could wipe the whole bucket: a put carrying
    `Nats-Rollup: all` purges every other message of the stream, and permissions cannot look at headers.
    Nothing here purges a key (that is the one KV operation that needs a roll-up); deletes are markers.
    """
    ttl = bucket.ttl_s or None
    return StreamConfig(
        name=bucket.stream, description=bucket.description, subjects=[bucket.subjects],
        allow_direct=True, allow_rollup_hdrs=False, deny_delete=True, discard=DiscardPolicy.NEW,
        duplicate_window=min(120.0, ttl) if ttl else 120.0, max_age=ttl, max_msgs_per_subject=bucket.history,
        max_consumers=-1, max_msgs=-1, num_replicas=replicas, storage=storage,
    )  # fmt: skip


def inbox_prefix(user: str) -> str:
    """The private inbox prefix of a NATS user: the only inbox its permissions let it read."""
    return f"_INBOX_{user}"


def identity_options(settings: NatsSettings) -> dict[str, Any]:
    """nats.connect options for who we are: user and password or credentials, TLS, our inbox prefix.

    A named user replies on its own inbox prefix (`_INBOX_<user>`) unless one is set: the only inbox its
    permissions let it subscribe to (`swarm.ops.security`), so no user reads another's replies.
    """
    options: dict[str, Any] = tls_options(settings)
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password.get_secret_value() if settings.password else None
    if settings.creds_file:
        options["user_credentials"] = str(settings.creds_file)
    prefix = settings.inbox_prefix or (inbox_prefix(settings.user) if settings.user else None)
    if prefix:
        options["inbox_prefix"] = prefix
    return options


def tls_options(settings: NatsSettings) -> dict[str, Any]:
    """nats.connect's `tls`: verify the servers (CA), present a client certificate (mTLS) when one is set."""
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return {}
    import ssl

    context = ssl.create_default_context(cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    if settings.tls_cert_file:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file or settings.tls_cert_file))
    return {"tls": context}


@dataclass
class LoopHealth:
    """How one supervised loop of a service is doing (reported by its health probe)."""

    alive: bool = False
    restarts_count: int = 0
    last_error: str = ""


class Loops:
    """A service's long-running loops, each restarted (and logged) if it dies, each visible in health."""

    RESTART_DELAY_S = 1.0

    def __init__(self) -> None:
        self.health: dict[str, LoopHealth] = {}

    async def run(self, name: str, loop: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Run `loop()` until it returns or `stop` is set; restart it after a crash.

        `loop` makes its own subscriptions: a restart starts from a clean reader.
        """
        state = self.health[name] = LoopHealth()
        try:
            while True:
                state.alive = True
                try:
                    await loop()
                    return
                except Exception as exc:  # a dead loop is logged, shown in health and restarted
                    state.alive = False
                    state.restarts_count += 1
                    state.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.error("loop %s died; restarting in %.0fs", name, self.RESTART_DELAY_S, exc_info=exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.RESTART_DELAY_S)
                    if stop.is_set():
                        return
        finally:
            if self.health.get(name) is state:
                del self.health[name]  # ended on purpose: no longer expected to run

    def details(self) -> dict[str, Any]:
        """The loops' states, and whether all of them run."""
        loops = {name: vars(state) for name, state in self.health.items()}
        return {"healthy": all(state.alive for state in self.health.values()), "loops": loops}


class Handles(Generic[H]):
    """Handles looked up by name once and cached. Callers asking at once share one lookup; a failed lookup
    is forgotten, so the next caller tries again."""

    def __init__(self, look_up: Callable[[str], Awaitable[H]]) -> None:
        self._look_up = look_up
        self._handles: dict[str, asyncio.Future[H]] = {}  # name -> its handle, or the one lookup under way

    async def get(self, name: str) -> H:
        """The handle of `name`."""
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = asyncio.ensure_future(self._look_up(name))
            handle.add_done_callback(lambda done: self._forget_failed(name, done))
        return await asyncio.shield(handle)  # a caller cancelled does not cancel the others' lookup

    def _forget_failed(self, name: str, done: asyncio.Future[H]) -> None:
        if (done.cancelled() or done.exception() is not None) and self._handles.get(name) is done:
            del self._handles[name]


class Bus:
    """One NATS connection with JetStream, and the helpers every service uses."""

    def __init__(self, nc: NatsClient, settings: NatsSettings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout_s)
        self.settings = settings
        self.acks = ReplyInbox(nc, resolve_publish_ack)
        self._kv = Handles(self._look_up_kv)
        self._object_stores = Handles(self.js.object_store)
        self._pending: list[tuple[float, str, asyncio.Future[None]]] = []  # (deadline, token, ack) of publish_nowait
        self._prune_at = 256
        self._reconnected = asyncio.Event()
        self._ack_mark = 0  # publishes before this ack token went out on a connection that is gone
        self.loops = Loops()

    def on_disconnected(self) -> None:
        """The connection dropped: publishes sent so far may have reached their stream, but not their acks."""
        self._ack_mark = self.acks.mark()

    def on_reconnected(self) -> None:
        """The connection is back, maybe on another server: fail the acks lost with the old one at once
        (their callers re-send or nak, rather than wait out the ack timeout; publishes buffered while
        disconnected went out now and keep waiting).

        Pull consumers need nothing here: nats-server keeps a waiting pull request when the consumer's
        leader or the reader's own node dies (tests/integration/test_cluster_bus.py)."""
        lost = self.acks.fail_before(self._ack_mark, PublishNotAcknowledged("connection lost before the ack came"))
        if lost:
            log.warning("nats: %d publish acks lost with the connection; their publishes will be retried", lost)
        self._reconnected.set()
        self._reconnected = asyncio.Event()

    @classmethod
    async def connect(cls, settings: NatsSettings, name: str) -> Bus:
        """Connect, reconnecting forever: services outlive a restarting nats-server."""

        async def on_error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        bus: Bus | None = None

        async def on_disconnect() -> None:
            log.warning("nats: disconnected")
            if bus is not None:
                bus.on_disconnected()

        async def on_reconnect() -> None:
            log.info("nats: reconnected to %s", bus.nc.connected_url.netloc if bus and bus.nc.connected_url else "?")
            if bus is not None:
                bus.on_reconnected()

        nc = await nats.connect(
            servers=settings.url.split(","), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
            **identity_options(settings),
        )  # fmt: skip
        bus = cls(nc, settings)
        return bus

    # ------------------------------------------------------------------ provisioning

    async def provision(
        self, streams: Iterable[StreamSpec] = ALL_STREAMS, buckets: Iterable[BucketSpec] = ALL_BUCKETS
    ) -> list[str]:
        """Create what is missing; report (never overwrite) what exists with another configuration.

        Returns the names created, so a second call returns [].
        """
        streams, buckets = tuple(streams), tuple(buckets)
        created = []
        for spec in streams:
            wanted = _stream_config(spec, self.settings)
            try:
                info = await self.js.stream_info(spec.name)
            except NotFoundError:
                await self._placing(f"stream {spec.name}", partial(self.js.add_stream, wanted))
                created.append(spec.name)
                continue
            diffs = _conflicts(wanted, info.config)
            if diffs:
                raise ProvisioningConflict(f"stream {spec.name} exists with another configuration: " + "; ".join(diffs))
        for bucket in buckets:
            if await self._ensure_bucket(bucket):
                created.append(bucket.name)
        if self.settings.stream_replicas > 1:
            names = [s.name for s in streams] + [b.stream for b in buckets]
            await wait_for_streams_replicated(self.js, names, self.settings.request_timeout_s * 3)
        return created

    async def _ensure_bucket(self, bucket: BucketSpec) -> bool:
        storage = StorageType.FILE if self.settings.stream_storage == "file" else StorageType.MEMORY
        if bucket.kind == "kv":
            try:
                status = await (await self.js.key_value(bucket.name)).status()
            except BucketNotFoundError:
                config = _kv_stream_config(bucket, storage, self.settings.stream_replicas)
                await self._placing(f"bucket {bucket.name}", partial(self.js.add_stream, config))
                return True
            wanted = (("history", bucket.history, status.history), ("ttl", bucket.ttl_s or None, status.ttl or None))
            diffs = [f"{name}: wanted {want!r}, found {have!r}" for name, want, have in wanted if want != have]
            if diffs:
                raise ProvisioningConflict(f"bucket {bucket.name} exists with another configuration: " + "; ".join(diffs))
            return False
        try:
            await self.js.object_store(bucket.name)
            return False
        except (BucketNotFoundError, NotFoundError):
            config = ObjectStoreConfig(
                bucket=bucket.name,
                description=bucket.description,
                ttl=bucket.ttl_s or None,
                storage=storage,
                replicas=self.settings.stream_replicas,
            )  # nats-py overwrites config.bucket with create_object_store's first argument
            await self._placing(f"bucket {bucket.name}", partial(self.js.create_object_store, bucket.name, config=config))
            return True

    async def _placing(self, what: str, create: Callable[[], Awaitable[object]]) -> None:
        """Create a stream, waiting (bounded) while its cluster has too few peers to place the replicas on."""
        loop = asyncio.get_running_loop()
        timeout_s = self.settings.request_timeout_s * 3
        deadline = loop.time() + timeout_s
        while True:
            try:
                await create()
                return
            except APIError as exc:
                if exc.err_code != NO_SUITABLE_PEERS:
                    raise
                if loop.time() > deadline:
                    raise PeersUnavailable(f"{what}: {exc.description} (waited {timeout_s:.0f}s for peers)") from exc
                log.info("%s: %s; waiting for the cluster's peers", what, exc.description)
            await asyncio.sleep(0.25)

    async def ensure_consumer(self, spec: ConsumerSpec) -> None:
        """Create the durable consumer, or check that the existing one filters what we expect."""
        config = consumer_config(spec)
        try:
            info = await self.js.consumer_info(spec.stream.name, spec.durable)
        except NotFoundError:
            await self.js.add_consumer(spec.stream.name, config)
            return
        found = set(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else []))
        if found != set(spec.filter_subjects):
            raise ProvisioningConflict(
                f"consumer {spec.stream.name}/{spec.durable} filters {sorted(found)}, wanted {sorted(spec.filter_subjects)}"
            )
        if info.config.ack_policy != AckPolicy.EXPLICIT:
            # One ack covering every earlier delivery would also ack a crashed reader's unfinished ones.
            raise ProvisioningConflict(
                f"consumer {spec.stream.name}/{spec.durable} acks {info.config.ack_policy}, wanted explicit acks"
                " (delete it to let it be re-created)"
            )

    async def pull_subscription(self, spec: ConsumerSpec) -> Puller:
        """A low-latency reader of a provisioned durable consumer."""
        await self.ensure_consumer(spec)
        return await Puller(self.nc, spec.stream.name, spec.durable).start()

    async def wait_reconnected(self) -> None:
        """Return when the connection is next re-established after a disconnect."""
        await self._reconnected.wait()

    async def kv(self, bucket: BucketSpec) -> KeyValue:
        """A key-value bucket handle, cached (the first wave of a run's steps asks together: one lookup)."""
        return await self._kv.get(bucket.name)

    async def object_store(self, name: str) -> ObjectStore:
        """An object store handle, cached as `kv`'s are."""
        return await self._object_stores.get(name)

    async def _look_up_kv(self, name: str) -> KeyValue:
        for _ in range(2):  # a replicated bucket electing a leader leaves the API unanswered a while
            with contextlib.suppress(nats.errors.TimeoutError):
                return await self.js.key_value(name)
        return await self.js.key_value(name)

    async def kv_keys(self, bucket: BucketSpec, pattern: str) -> list[str]:
        """Keys of `bucket` matching a subject-style `pattern`, filtered by the server.

        nats-py's `KeyValue.keys` reads every key of the bucket and filters them itself.
        """
        kv = await self.kv(bucket)
        watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=True)
        keys = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                keys.append(entry.key)
        finally:
            await watcher.stop()
        return keys

    # ------------------------------------------------------------------ publishing

    async def publish(self, subject: str, message: BaseModel, msg_id: str | None = None) -> None:
        """Publish to JetStream and wait for the stream's ack (at-least-once)."""
        await self.publish_bytes(subject, message.model_dump_json().encode(), {"Nats-Msg-Id": msg_id} if msg_id else None)

    async def publish_bytes(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        """`publish` of a payload already encoded (a KV value: subject `$KV.<bucket>.<key>`)."""
        reply, token, ack = await self.acks.expect()
        await self.nc.publish(subject, payload, reply=reply, headers=headers)
        try:
            await wait_future(ack, self.settings.request_timeout_s)
        except TimeoutError:
            self.acks.forget(token)
            raise PublishNotAcknowledged(f"no ack from the stream of {subject}") from None

    async def publish_nowait(self, subject: str, message: BaseModel, msg_id: str | None = None) -> None:
        """Publish to JetStream without waiting for this ack; `flush_publishes` waits for all of them."""
        reply, token, ack = await self.acks.expect()
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await self.nc.publish(subject, message.model_dump_json().encode(), reply=reply, headers=headers)
        self._pending.append((asyncio.get_running_loop().time() + self.settings.request_timeout_s, token, ack))
        if len(self._pending) >= self._prune_at:
            self._prune_pending()

    def _prune_pending(self) -> None:
        """Forget acknowledged publishes (failed ones stay, for `flush_publishes` to raise); give up on
        acks lost to a reconnect, which would otherwise be waited for forever."""
        now = asyncio.get_running_loop().time()
        kept = []
        lost = 0
        for deadline, token, future in self._pending:
            if future.done():
                if not future.cancelled() and future.exception() is not None:
                    kept.append((deadline, token, future))
                continue
            if deadline < now:
                future.cancel()
                self.acks.forget(token)
                lost += 1
                continue
            kept.append((deadline, token, future))
        if lost:
            log.warning("%d publish acks never came (lost to a reconnect?); given up", lost)
        self._pending = kept
        self._prune_at = max(256, 2 * len(kept))

    async def flush_publishes(self, timeout_s: float | None = None) -> None:
        """Wait until every `publish_nowait` so far is acknowledged by its stream; raise if one is not."""
        pending, self._pending = self._pending, []
        self._prune_at = 256
        waiting = [(t, f) for _, t, f in pending if not f.done() or (not f.cancelled() and f.exception() is not None)]
        if not waiting:
            return
        futures = [f for _, f in waiting]
        done, not_done = await asyncio.wait(futures, timeout=timeout_s or self.settings.request_timeout_s)
        for token, future in waiting:
            if future in not_done:
                future.cancel()
                self.acks.forget(token)
        failed = [f for f in done if not f.cancelled() and f.exception() is not None]
        if not_done or failed:
            raise PublishNotAcknowledged(f"{len(not_done) + len(failed)} of {len(futures)} publishes not acknowledged")

    # ------------------------------------------------------------------ health and shutdown

    async def serve_health(self, service: str, details: Callable[[], dict[str, Any]] | None = None) -> None:
        """Answer `swarm.health.<service>` probes (every replica answers), with the state of its loops."""
        instance = f"{socket.gethostname()}:{os.getpid()}"

        async def on_probe(msg: Msg) -> None:
            body = {"service": service, "instance": instance, **self.loops.details(), **(details() if details else {})}
            await msg.respond(json.dumps(body).encode())

        await self.nc.subscribe(Subjects.health(service), cb=on_probe)

    async def close(self) -> None:
        """Wait for outstanding publishes, flush, close.

        Not `drain`: callers return from `consume` only after in-flight work is settled, and nats-py's
        drain waits its full timeout on KV and pull subscriptions that nobody reads any more
        (prefetched, unacked messages are redelivered elsewhere).
        """
        if self.nc.is_closed:
            return
        try:
            await self.flush_publishes(timeout_s=5)
            await self.nc.flush(timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("closing without every publish acknowledged: %s", exc)
        await self.nc.close()


def answerable(msg: Msg) -> bool:
    """Whether a core request should be answered: it has a reply subject, and was not pushed here by a
    JetStream consumer whose deliver subject a client aimed at us (its reply is a `$JS.` ack subject)."""
    return bool(msg.reply) and not msg.reply.startswith("$JS.")


MessageHandler = Callable[[Msg], Awaitable[None]]
BatchHandler = Callable[[list[Msg]], Awaitable[None]]

# Bad payloads: no delivery can succeed.
MALFORMED = (Reject, ValidationError, json.JSONDecodeError, UnicodeDecodeError)
# The world is away (NATS reconnecting, a stream not acking, a disk or socket error): wait it out.
OUTAGES = (nats.errors.Error, TimeoutError, OSError)
RETRY_BACKOFF_CAP_S = 30.0


def deliveries(msg: Msg) -> int:
    """How many times JetStream delivered this message (1 for a message not from a consumer)."""
    try:
        return int(msg.metadata.num_delivered or 1)
    except (nats.errors.Error, ValueError, AttributeError, IndexError):
        return 1


def is_settled(msg: Msg) -> bool:
    """Whether the message was acked, nak'd or terminated already."""
    return bool(getattr(msg, "_ackd", False))


@dataclass(frozen=True)
class Verdict:
    """What becomes of a message that could not be handled: terminated, or redelivered after `delay_s`."""

    terminate: bool
    delay_s: float = 0.0


def verdict(exc: BaseException, delivery: int, give_up_after: int, subject: str) -> Verdict:
    """The one error policy for a message that could not be handled; each case is logged once.

    - malformed (`Reject`, a validation or decoding error): terminated now, never redelivered.
    - an outage or a `Retry`: nak'd with its delay (backoff for outages); never given up by us.
    - a bounded `Retry` or any other exception (a bug, a poison payload): nak'd with exponential
      backoff, and terminated on delivery `give_up_after`: a message cannot wedge a consumer.

    `fail` applies it to a nats-py message, `swarm.controlplane` to a faststream one.
    """
    n = delivery
    where = f"{subject} (delivery {n})"
    if isinstance(exc, MALFORMED):
        log.warning("rejected %s: %s", where, str(exc)[:500])
        return Verdict(terminate=True)
    if isinstance(exc, Retry) and not exc.bounded:
        if n == 1:
            log.info("retry %s in %.1fs: %s", where, exc.delay_s, exc)
        return Verdict(terminate=False, delay_s=exc.delay_s)
    if isinstance(exc, OUTAGES):
        if n == 1 or n % 10 == 0:
            log.warning("%s not handled, will be redelivered: %s: %s", where, type(exc).__name__, exc)
        return Verdict(terminate=False, delay_s=min(RETRY_BACKOFF_CAP_S, 0.5 * 2 ** min(n, 8)))
    if n >= give_up_after:
        log.error("gave up on %s after %d deliveries, terminated: %s: %s", subject, n, type(exc).__name__, exc)
        return Verdict(terminate=True)
    if n == 1:
        if isinstance(exc, Retry):
            log.warning("retry %s (at most %d deliveries): %s", where, give_up_after, exc)
        else:
            log.error("handler failed on %s; redelivering (at most %d times)", where, give_up_after, exc_info=exc)
    delay_s = exc.delay_s if isinstance(exc, Retry) else 0.0
    return Verdict(terminate=False, delay_s=max(delay_s, min(RETRY_BACKOFF_CAP_S, 0.5 * 2 ** min(n, 8))))


async def fail(msg: Msg, exc: BaseException, give_up_after: int = ConsumerSpec.give_up_after) -> None:
    """`verdict`'s policy applied to a message that could not be handled: terminated or nak'd."""
    decided = verdict(exc, deliveries(msg), give_up_after, msg.subject)
    with contextlib.suppress(nats.errors.Error):
        if decided.terminate:
            await msg.term()
        else:
            await msg.nak(delay=decided.delay_s)


async def settle(msg: Msg, handler: MessageHandler, give_up_after: int = ConsumerSpec.give_up_after) -> None:
    """Run one handler on one JetStream message: ack on success, else `fail`'s policy."""
    try:
        await handler(msg)
    except Exception as exc:  # every failure goes through the one policy; none is swallowed
        await fail(msg, exc, give_up_after)
    else:
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()


async def _fetch(psub: Puller, batch: int, timeout_s: float, ready: bool = False) -> list[Msg] | None:
    """A fetch that survives outages: None when nothing came (or NATS is away for a moment); with `ready`,
    only what the consumer holds now (`Puller.fetch_ready`)."""
    try:
        if ready:
            return await psub.fetch_ready(batch, timeout=timeout_s) or None
        return await psub.fetch(batch, timeout=timeout_s)
    except (TimeoutError, nats.errors.TimeoutError):
        return None
    except nats.errors.Error as exc:  # reconnecting, server restarting, JetStream briefly unavailable
        log.warning("fetch from %s failed (%s); retrying", psub.next_subject, exc)
        await asyncio.sleep(0.5)
        return None


async def consume(
    psub: Puller,
    handler: MessageHandler,
    stop: asyncio.Event,
    *,
    batch: int = 64,
    concurrency: int = 1,
    fetch_timeout_s: float = 1.0,
    heartbeat_s: float | None = None,
    give_up_after: int = ConsumerSpec.give_up_after,
) -> None:
    """Fetch until `stop`; run `handler` on each message under `settle`, at most `concurrency` at once.

    With `heartbeat_s`, a message whose handler is still running is reported in progress that often,
    so the consumer's ack_wait can stay short (a crashed consumer's messages come back soon) while a
    slow handler (a synthesis on a CPU model) keeps its message.
    On stop, no new batch is fetched and in-flight messages finish before return.
    """
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def run_one(msg: Msg) -> None:
        try:
            await settle_with_heartbeat(msg)
        finally:
            slots.release()

    async def settle_with_heartbeat(msg: Msg) -> None:
        if heartbeat_s is None:
            await settle(msg, handler, give_up_after)
            return
        settling = asyncio.create_task(settle(msg, handler, give_up_after))
        while not settling.done():
            await asyncio.wait({settling}, timeout=heartbeat_s)
            if not settling.done():
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()
        await settling

    while not stop.is_set():
        free = max(1, min(batch, concurrency - len(running))) if concurrency > 1 else batch
        msgs = await _fetch(psub, free, fetch_timeout_s)
        for msg in msgs or ():
            if concurrency == 1:
                await settle_with_heartbeat(msg)
                continue
            await slots.acquire()
            task = asyncio.create_task(run_one(msg))
            running.add(task)
            task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running, return_exceptions=True)
    with contextlib.suppress(nats.errors.Error):
        await psub.unsubscribe()


async def consume_batches(
    psub: Puller,
    handler: BatchHandler,
    stop: asyncio.Event,
    *,
    batch: int = 256,
    fetch_timeout_s: float | Callable[[], float] = 1.0,
    on_idle: Callable[[], Awaitable[None]] | None = None,
    give_up_after: int = ConsumerSpec.give_up_after,
    linger_s: Callable[[], float] | None = None,
) -> None:
    """Fetch until `stop`; hand each fetched batch to `handler`, which settles its messages itself
    (now, or later: the dispatcher acks results once a checkpoint covers them).

    With `linger_s` (a reader off every step's path, as the recorder), messages are read in bursts: the
    first message of a quiet stream is read alone, then the reader sleeps `linger_s()` while the stream
    holds what comes, and takes all of it at once (again at once while full batches come). It wakes once
    per burst instead of once per message, and so do the server's writes to it.

    Where `handler` raises, the unsettled messages of the batch go through `fail` one by one: an
    outage redelivers them, and anything else is isolated by handling each message alone, so one
    poison message fails (and is eventually terminated) without taking its batch-mates with it.
    `on_idle` runs when a fetch brings nothing. A fetch in progress is abandoned as soon as `stop` is set.
    """
    stopped = asyncio.create_task(stop.wait())
    bursting = False  # lingering reader: the last read brought messages, the next one takes what came since
    try:
        while not stop.is_set():
            timeout_s = fetch_timeout_s() if callable(fetch_timeout_s) else fetch_timeout_s
            if linger_s is None:
                fetch = asyncio.ensure_future(_fetch(psub, batch, timeout_s))
            elif bursting:
                fetch = asyncio.ensure_future(_fetch(psub, batch, timeout_s, ready=True))
            else:
                fetch = asyncio.ensure_future(_fetch(psub, 1, timeout_s))
            await asyncio.wait((fetch, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not fetch.done():
                fetch.cancel()
                break
            msgs = fetch.result()
            if not msgs:
                bursting = False
                if on_idle is not None:
                    await _handle_batch(on_idle_as_batch(on_idle), [], give_up_after)
                continue
            await _handle_batch(handler, msgs, give_up_after)
            if linger_s is not None:
                if len(msgs) < batch:  # the stream is read to its end: let it gather the next burst
                    await asyncio.wait((stopped,), timeout=max(0.0, linger_s()))
                bursting = True
    finally:
        stopped.cancel()
        with contextlib.suppress(nats.errors.Error):
            await psub.unsubscribe()


def on_idle_as_batch(on_idle: Callable[[], Awaitable[None]]) -> BatchHandler:
    """`on_idle` under the batch error policy (an idle tick carries no message)."""

    async def handler(_: list[Msg]) -> None:
        await on_idle()

    return handler


async def _handle_batch(handler: BatchHandler, msgs: list[Msg], give_up_after: int) -> None:
    try:
        await handler(msgs)
    except OUTAGES as exc:
        unsettled = [m for m in msgs if not is_settled(m)]
        log.warning("batch of %d not settled (%s: %s); redelivering", len(unsettled), type(exc).__name__, exc)
        for msg in unsettled:
            await fail(msg, exc, give_up_after)
    except Exception as exc:  # isolated below, then the one policy per message
        unsettled = [m for m in msgs if not is_settled(m)]
        if len(unsettled) == 1:
            await fail(unsettled[0], exc, give_up_after)
        elif not unsettled:
            log.error("batch handler failed after settling its messages", exc_info=exc)
        else:
            log.warning("batch handler failed on %d messages (%s); handling them one by one", len(unsettled), exc)
            for msg in unsettled:
                await _handle_batch(handler, [msg], give_up_after)
