"""Read-only SQL over core NATS request/reply: how the CLI and other processes read the recorder's engine."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from clickhouse_connect.driver.exceptions import Error as ClickHouseError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from swarm.bus import answerable
from swarm.contracts import Subjects
from swarm.eventlog import EventLog, encode_rows

log = logging.getLogger(__name__)

# Leading comments and parentheses are skipped; the engine's readonly=1 setting is the real guard.
_READ_ONLY = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*(SELECT|WITH|DESCRIBE|DESC|SHOW|EXPLAIN)\b", re.IGNORECASE | re.DOTALL
)


def is_read_only(sql: str) -> bool:
    """Whether the statement starts like a read (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN)."""
    return bool(_READ_ONLY.match(sql))


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def answer(eventlog: EventLog, data: bytes, max_reply_bytes: int) -> bytes:
    """The reply to one query request: {"rows": [...]} or {"error": "..."}."""
    try:
        request = json.loads(data)
        sql, parameters = request["sql"], request.get("parameters") or {}
        if not isinstance(sql, str) or not isinstance(parameters, dict):
            raise TypeError("'sql' must be a string and 'parameters' an object")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return _error(f'bad request (expected {{"sql": ..., "parameters": {{...}}}}): {exc}')
    if not is_read_only(sql):
        return _error("only read-only statements are answered (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN)")
    try:
        # In a thread: chdb runs in process, and the event loop must keep fetching and acking.
        rows: list[dict[str, Any]] = await asyncio.to_thread(eventlog.query, sql, parameters, {"readonly": 1})
    except (ClickHouseError, ValueError, TypeError) as exc:
        return _error(str(exc)[:4000])
    body = encode_rows(rows)
    if len(body) > max_reply_bytes:
        return _error(f"the result is {len(body)} bytes, over the {max_reply_bytes} a reply may carry: add a LIMIT")
    return body


async def serve_queries(nc: NatsClient, eventlog: EventLog, max_reply_bytes: int) -> Subscription:
    """Answer requests on Subjects.RECORDER_QUERY until the subscription is drained."""

    async def on_query(msg: Msg) -> None:
        if not answerable(msg):
            return
        try:
            body = await answer(eventlog, msg.data, max_reply_bytes)
        except Exception as exc:  # the caller must get an answer, not a timeout; the bug is logged
            log.exception("query failed")
            body = _error(f"internal error: {exc}")
        await msg.respond(body)

    return await nc.subscribe(Subjects.RECORDER_QUERY, cb=on_query)
