"""Results to the dispatcher, in batches: one message per run for whatever finished while the run's last
batch was being stored.

A batch is sent as soon as the one before it is acknowledged, so no result waits for a timer; under load
each message carries many results, which spares the worker a publish and a stream acknowledgement per step,
the server four message transmissions, and the dispatcher a delivery and an ack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from swarm.bus import Bus
from swarm.contracts import RESULT_BATCH_MAX_BYTES, RESULT_BATCH_MAX_RESULTS, StepResult, Subjects

# A StepResultBatch's JSON around its results: the results are encoded once each (to size the batch) and
# joined, not encoded again as part of a model (tests/unit/test_result_batches.py keeps the two equal).
_BATCH_HEAD = b'{"v":1,"results":['
_BATCH_TAIL = b"]}"


def batch_json(encoded: list[bytes]) -> bytes:
    """The JSON of the StepResultBatch of these encoded results."""
    return _BATCH_HEAD + b",".join(encoded) + _BATCH_TAIL


def chunks(
    encoded: list[bytes], max_bytes: int = RESULT_BATCH_MAX_BYTES, max_results: int = RESULT_BATCH_MAX_RESULTS
) -> Iterator[tuple[int, int]]:
    """(start, end) slices of `encoded` whose batches stay within `max_bytes` (a larger result goes alone) and
    `max_results`."""
    start, size = 0, len(_BATCH_HEAD) + len(_BATCH_TAIL)
    for i, data in enumerate(encoded):
        if i > start and (size + len(data) + 1 > max_bytes or i - start >= max_results):
            yield start, i
            start, size = i, len(_BATCH_HEAD) + len(_BATCH_TAIL)
        size += len(data) + 1
    if start < len(encoded):
        yield start, len(encoded)


class ResultSender:
    """Sends results in StepResultBatches; `send` returns once the result is stored by the RESULTS stream."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._queued: dict[str, list[tuple[bytes, asyncio.Future[None]]]] = {}  # per results subject
        self._sending: dict[str, asyncio.Task[None]] = {}

    async def send(self, tenant: str, result: StepResult) -> None:
        """Queue the result for its run's next batch and wait until that batch is acknowledged."""
        subject = Subjects.result(tenant, result.run_id)
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(subject, []).append((result.model_dump_json().encode(), stored))
        if subject not in self._sending:
            self._sending[subject] = asyncio.create_task(self._drain(subject))
        await stored  # cancelled with its caller: the result is still sent, nobody waits for it

    async def _drain(self, subject: str) -> None:
        try:
            while queued := self._queued.pop(subject, None):
                encoded = [data for data, _ in queued]
                for start, end in chunks(encoded):
                    waiting = [stored for _, stored in queued[start:end]]
                    try:
                        await self.bus.publish_bytes(subject, batch_json(encoded[start:end]))
                    except Exception as exc:  # each waiting caller raises it: its step is redelivered
                        for stored in waiting:
                            if not stored.done():
                                stored.set_exception(exc)
                    else:
                        for stored in waiting:
                            if not stored.done():
                                stored.set_result(None)
        finally:
            del self._sending[subject]
