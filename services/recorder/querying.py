"""Read-only SQL over core NATS request/reply: how the CLI and other processes read the recorder's engine.

A request is `{"sql": ..., "parameters": {...}}`; the reply is `{"rows": [...]}` or `{"error": "..."}`.
A result larger than one message (NATS max_payload) comes back in parts when the request says
`"parts": true`: several messages on its reply subject, `{"rows": [...], "part": i, "more": true}`,
the last with `"more": false`. A request without it gets an error for such a result, as before.
"""

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
from swarm.eventlog import EventLog, ResultTooLarge, encode_parts, encode_rows

log = logging.getLogger(__name__)

# The most one answer may carry over all its parts: the client buffers them all (nats-py drops a
# subscription's messages past 64 MiB pending), and one runaway SELECT must not fill the recorder's memory.
MAX_RESULT_BYTES = 32 * 1024 * 1024

# Leading comments and parentheses are skipped; the engine's readonly=1 setting is the real guard.
_READ_ONLY = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*(SELECT|WITH|DESCRIBE|DESC|SHOW|EXPLAIN)\b", re.IGNORECASE | re.DOTALL
)


def is_read_only(sql: str) -> bool:
    """Whether the statement starts like a read (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN)."""
    return bool(_READ_ONLY.match(sql))


def _error(message: str) -> list[bytes]:
    return [json.dumps({"error": message}).encode()]


async def answer(
    eventlog: EventLog, data: bytes, max_reply_bytes: int, max_result_bytes: int = MAX_RESULT_BYTES
) -> list[bytes]:
    """The reply messages to one query request, in order: the rows (in parts if asked), or one error."""
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
    if not request.get("parts"):
        body = encode_rows(rows)
        if len(body) > max_reply_bytes:
            return _error(
                f"the result is {len(body)} bytes, over the {max_reply_bytes} a reply may carry: "
                'add a LIMIT, or ask for it in parts ("parts": true)'
            )
        return [body]
    try:
        return await asyncio.to_thread(encode_parts, rows, max_reply_bytes, max_result_bytes)
    except ResultTooLarge as exc:
        return _error(f"{exc}: add a LIMIT or aggregate in the query")


async def serve_queries(nc: NatsClient, eventlog: EventLog, max_reply_bytes: int) -> Subscription:
    """Answer requests on Subjects.RECORDER_QUERY until the subscription is drained."""
    # A reply larger than the server's max_payload would be refused by the client library.
    reply_bytes = min(max_reply_bytes, nc.max_payload or max_reply_bytes)

    async def on_query(msg: Msg) -> None:
        if not answerable(msg):
            return
        try:
            bodies = await answer(eventlog, msg.data, reply_bytes)
        except Exception as exc:  # the caller must get an answer, not a timeout; the bug is logged
            log.exception("query failed")
            bodies = _error(f"internal error: {exc}")
        for body in bodies:
            await nc.publish(msg.reply, body)

    return await nc.subscribe(Subjects.RECORDER_QUERY, cb=on_query)
