"""The dispatcher, put together from parts with one job each.

- `Intake` (intake.py): plans and cancellations from RUNS;
- `Results` (results.py): step results, one results partition at a time, in batches;
- `LiveRuns` (live.py): the runs held in memory, one `LiveRun` record each, scheduled and checkpointed;
- `RunStore` (store.py): checkpoints, loading a run back, running markers;
- `Outbox` (outbox.py): steps, step events, progress and runs' ends published;
- `Partitions` (partitions.py): this replica's share of the results partitions (leases.py), handed over
  and adopted as replicas come and go;
- `LostStepSweeper` (sweeper.py): attempts with no result long after their dispatch are failed.
The pure state of a run is `RunState` (state.py); the order in which ready steps go out is `Scheduler`'s.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket

from nats.aio.msg import Msg

from services.dispatcher.intake import Intake
from services.dispatcher.live import LiveRuns
from services.dispatcher.outbox import Outbox
from services.dispatcher.partitions import Partitions
from services.dispatcher.results import Results
from services.dispatcher.scheduling import Scheduler
from services.dispatcher.settings import DispatcherSettings
from services.dispatcher.store import RunStore
from services.dispatcher.sweeper import LostStepSweeper
from swarm.bus import Bus, ConsumerSpec
from swarm.contracts import DISPATCHER_PLANS_CONSUMER, RUNS, RunEventKind, Subjects

PLANS_CONSUMER = ConsumerSpec(
    stream=RUNS,
    durable=DISPATCHER_PLANS_CONSUMER,
    filter_subjects=(Subjects.run_kind_all(RunEventKind.PLANNED), Subjects.run_kind_all(RunEventKind.CANCEL)),
    ack_wait_s=60.0,
)


class Dispatcher:
    """Owns the runs in memory; the KV checkpoints make any replica able to take them over."""

    def __init__(self, bus: Bus, settings: DispatcherSettings) -> None:
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        scheduler = Scheduler(
            settings.max_in_flight, settings.max_in_flight_per_tenant, settings.tenant_weights
        )
        self.runs = LiveRuns(RunStore(bus, settings), Outbox(bus, settings), scheduler, settings)
        self.partitions = Partitions(bus, self.instance_id, self.runs, scheduler)
        self.intake = Intake(self.runs, self.partitions.owns)
        self.results = Results(bus, self.runs, settings, self.partitions.owns)
        self.sweeper = LostStepSweeper(self.runs, settings, self.instance_id)

    async def on_run_message(self, msg: Msg) -> None:
        """A planned run starts; a cancel request cancels (see `Intake`)."""
        await self.intake.on_run_message(msg)

    async def acquire_leases(self) -> None:
        """Take a first share of the partitions (before plans are consumed, so new runs stay in memory)."""
        await self.partitions.acquire(self.results.consume)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leases renewed and the owned partitions consumed, until `stop`."""
        if self.partitions.leases is None:
            await self.acquire_leases()
        await self.partitions.keep(stop)

    async def sweep_lost_steps(self, stop: asyncio.Event) -> None:
        """Fail attempts that got no result long after their dispatch, until `stop`."""
        await self.sweeper.run(stop)
