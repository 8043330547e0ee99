"""Reading the event log through the recorder: the operator tools' way to query the local chdb directory."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from swarm.contracts import Subjects
from swarm.eventlog import EventLogError
from swarm.inference import NO_RESPONDERS_STATUS

RECORDER_NOT_RUNNING = "the recorder is not running: start the stack with `swarm up`"


class RecorderNotRunning(EventLogError):
    """Nobody answers on the recorder's query subject."""


class RecorderQueryError(EventLogError):
    """The recorder answered with an error (bad SQL, not read-only, result too large, timeout)."""


async def query_via_recorder(
    nc: NatsClient, sql: str, parameters: Mapping[str, Any] | None = None, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Run a read-only query on the recorder's engine (the CLI's way to read the local chdb directory).

    The rows come back in as many messages as they need (see services/recorder/querying.py);
    `timeout_s` bounds the wait for each of them.
    """
    body = json.dumps({"sql": sql, "parameters": dict(parameters or {}), "parts": True}).encode()
    # Our own inbox, not nc.request: that takes the first reply only.
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    rows: list[dict[str, Any]] = []
    try:
        await nc.publish(Subjects.RECORDER_QUERY, body, reply=inbox)
        for expected in itertools.count():
            try:
                reply = await subscription.next_msg(timeout=timeout_s)
            except nats.errors.TimeoutError as exc:
                waited = f"part {expected} of the answer" if expected else "an answer"
                raise RecorderQueryError(f"the recorder did not send {waited} within {timeout_s:g}s") from exc
            if not reply.data and reply.headers and reply.headers.get("Status") == NO_RESPONDERS_STATUS:
                raise RecorderNotRunning(RECORDER_NOT_RUNNING)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RecorderQueryError(answer["error"])
            if answer.get("part", 0) != expected:
                raise RecorderQueryError(f"part {answer.get('part')} of the answer arrived, {expected} expected")
            rows.extend(answer["rows"])
            if not answer.get("more"):
                break
    finally:
        await subscription.unsubscribe()
    return rows
