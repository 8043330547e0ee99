"""The recorder wired together: event log, NATS, its three consumers (events, runs, run index), queries, health."""

from __future__ import annotations

import asyncio
import logging

from services.recorder.events import EventRecorder
from services.recorder.querying import serve_queries
from services.recorder.runindex import RunIndexer
from services.recorder.runs import RunRecorder
from services.recorder.settings import MIGRATIONS_DIR, RecorderSettings
from swarm.bus import Bus
from swarm.contracts import EVENTS, RUN_INDEX_BUCKET, RUNS
from swarm.eventlog import EventLog

log = logging.getLogger(__name__)


async def run_recorder(settings: RecorderSettings, stop: asyncio.Event) -> None:
    """Record until `stop`; then stop fetching, insert what is pending, and close."""
    # With migrate off (compose: the clickhouse-migrate job ran them as swarm_migrator), the recorder's
    # user needs no DDL right at all.
    migrations = MIGRATIONS_DIR if settings.migrate else None
    eventlog = await asyncio.to_thread(
        lambda: EventLog.open(settings.clickhouse, migrations, create_database=settings.migrate)
    )
    eventlog.model_prices = settings.model_prices
    try:
        bus = await Bus.connect(settings.nats, "recorder")
        try:
            await bus.provision(streams=(EVENTS, RUNS), buckets=(RUN_INDEX_BUCKET,))
            events = EventRecorder(bus, eventlog, settings)
            runs = RunRecorder(bus, eventlog, settings)
            index = RunIndexer(bus, settings)
            queries = await serve_queries(bus.nc, eventlog, settings.query_max_reply_bytes)
            await bus.serve_health(
                "recorder",
                lambda: {**events.details(), "runs_recorded": runs.recorded_count, "runs_indexed": index.indexed_count},
            )
            log.info("recording into %s (%s)", settings.clickhouse.database, settings.clickhouse.mode)
            await asyncio.gather(
                bus.loops.run("events", lambda: events.run(stop), stop),
                bus.loops.run("runs", lambda: runs.run(stop), stop),
                bus.loops.run("run-index", lambda: index.run(stop), stop),
            )
            await queries.unsubscribe()
        finally:
            await bus.close()
    finally:
        eventlog.close()
