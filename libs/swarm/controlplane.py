"""The control plane on faststream: one broker per service on its one NATS connection, subscribers declared
from `ConsumerSpec`s, every message settled by `swarm.bus.verdict`, the same error policy as the Bus's.

The control plane (planner, aggregator) handles a few messages a second, each taking up to minutes (LLM
calls): faststream's declarative subscribers, graceful shutdown and AsyncAPI description cost nothing
there. The data plane (dispatcher, worker pool, gateway, recorder) stays on `swarm.bus` (README: "When
faststream, when the Bus", with the figures of `loadtest/faststream_vs_bus.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from faststream import AckPolicy, FastStream
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.security import NatsCredentials, NatsSecurity, NatsUserPassword

from swarm.bus import (
    Bus,
    ConsumerSpec,
    MessageHandler,
    consumer_config,
    deliveries,
    identity_options,
    verdict,
)
from swarm.settings import NatsSettings

log = logging.getLogger(__name__)


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


async def settle_message(
    message: NatsMessage, handler: MessageHandler, give_up_after: int, heartbeat_s: float | None
) -> None:
    """Run `handler` on one message: ack on success, else `verdict`'s policy through faststream's message.

    With `heartbeat_s`, the message is reported in progress that often while the handler runs, so the
    consumer's ack_wait can stay short while a slow handler (an LLM call) keeps its message.
    """
    msg = message.raw_message
    handling = asyncio.ensure_future(handler(msg))
    try:
        while heartbeat_s is not None and not handling.done():
            await asyncio.wait({handling}, timeout=heartbeat_s)
            if not handling.done():
                with contextlib.suppress(nats.errors.Error):
                    await message.in_progress()
        await handling
    except Exception as exc:  # every failure goes through the one policy; none is swallowed
        decided = verdict(exc, deliveries(msg), give_up_after, msg.subject)
        with contextlib.suppress(nats.errors.Error):
            await (message.reject() if decided.terminate else message.nack(delay=decided.delay_s))
    else:
        with contextlib.suppress(nats.errors.Error):
            await message.ack()
    finally:
        if not handling.done():  # cancelled from outside (shutdown past its grace): stop the handler too
            handling.cancel()


class ControlPlane:
    """A service's faststream broker, the Bus on the broker's connection, and its declared subscribers."""

    def __init__(self, settings: NatsSettings, name: str, graceful_timeout_s: float) -> None:
        self.settings = settings
        self.name = name
        self.bus: Bus | None = None
        self.specs: list[ConsumerSpec] = []
        identity = broker_identity(settings)
        # faststream gives a pull subscription its own inbox prefix (`_INBOX.` by default), not the broker's.
        self.inbox_prefix = f"{identity.get('inbox_prefix', '_INBOX')}.".encode()
        self.broker = NatsBroker(
            settings.url.split(","),
            name=name,
            **identity,
            max_reconnect_attempts=-1,  # outlive a restarting nats-server, as Bus.connect does
            reconnect_time_wait=0.5,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            js_options={"timeout": settings.request_timeout_s},  # faststream's own default is 0.5 s
            graceful_timeout=graceful_timeout_s,
            logger=logging.getLogger(f"{__name__}.{name}"),  # the service's log format, not faststream's own
        )

    async def _disconnected(self) -> None:
        log.warning("nats: disconnected")
        if self.bus is not None:
            self.bus.on_disconnected()

    async def _reconnected(self) -> None:
        if self.bus is not None:
            self.bus.on_reconnected()

    def subscribe(
        self,
        spec: ConsumerSpec,
        handler: MessageHandler,
        *,
        concurrency: int,
        fetch_timeout_s: float,
        heartbeat_s: float | None,
        description: str,
    ) -> None:
        """Declare a subscriber on `spec`'s durable consumer: `concurrency` workers, each message fetched
        alone (no waiting for a batch to fill), settled by `settle_message`.

        faststream's fetch loop may hold one message more than the workers while all of them are busy;
        it is not reported in progress until a worker takes it, so a handler slower than the consumer's
        ack_wait can see that one redelivered (handlers here are idempotent: msg ids, the run index).
        """
        if len(spec.filter_subjects) != 1:
            raise ValueError(f"a control-plane subscriber filters one subject; {spec.durable} has several")

        async def on_message(message: NatsMessage) -> None:
            await settle_message(message, handler, spec.give_up_after, heartbeat_s)

        on_message.__name__ = spec.durable  # faststream's AsyncAPI names the operation after the function
        self.specs.append(spec)
        self.broker.subscriber(
            spec.filter_subjects[0],
            # The Bus provisions streams; faststream must never create or alter one.
            stream=JStream(spec.stream.name, declare=False),
            durable=spec.durable,
            config=consumer_config(spec),  # only used if the consumer is missing; `start` provisions it first
            pull_sub=PullSub(batch_size=1, timeout=fetch_timeout_s),
            max_workers=concurrency,
            inbox_prefix=self.inbox_prefix,
            ack_policy=AckPolicy.MANUAL,  # settle_message decides; faststream's default would terminate on error
            no_reply=True,
            title=f"{self.name}/{spec.durable}",
            description=description,
        )(on_message)

    async def connect(self) -> Bus:
        """Connect the broker, wrap its connection in a Bus, provision streams, buckets and the consumers."""
        nc = await self.broker.connect()
        self.bus = Bus(nc, self.settings)
        created = await self.bus.provision()
        if created:
            log.info("provisioned %s", ", ".join(created))
        for spec in self.specs:
            await self.bus.ensure_consumer(spec)
        return self.bus

    def app(
        self,
        on_startup: Callable[[], Awaitable[None]],
        details: Callable[[], dict[str, Any]] | None = None,
    ) -> FastStream:
        """The faststream application: `on_startup` runs once connected and provisioned, before the
        subscribers start; health probes are answered once they run. SIGTERM stops the subscribers, waits
        for messages in hand (the broker's graceful timeout), then drains the one connection."""

        async def started() -> None:
            assert self.bus is not None
            await self.bus.serve_health(self.name, details)
            await self.bus.nc.flush()  # the probe subscription is on the server once started
            log.info("consuming %s", ", ".join(f"{s.stream.name}/{s.durable}" for s in self.specs))

        async def starting() -> None:
            await self.connect()
            await on_startup()

        return FastStream(self.broker, logger=log, on_startup=[starting], after_startup=[started])
