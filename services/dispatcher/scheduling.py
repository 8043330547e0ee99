"""Which ready steps go to the workers next: priorities, fair share, per-tenant and global caps. Pure."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from services.dispatcher.state import Dispatch, RunPhase, RunState


@dataclass
class Scheduler:
    """Hands out free slots one at a time: higher priority first, then the run with the fewest steps in flight.

    Least-in-flight-first is the fair share: a small run gets the next free slot even while a huge
    run has thousands of steps ready, so it is never starved.
    """

    max_in_flight: int
    max_in_flight_per_tenant: int

    def fill(self, runs: Iterable[RunState]) -> list[tuple[RunState, list[Dispatch]]]:
        """Queue ready steps across `runs` until every cap is reached; the dispatches per run."""
        runs = [r for r in runs if r.phase is RunPhase.RUNNING]
        total = sum(r.in_flight for r in runs)
        per_tenant = Counter[str]()
        for run in runs:
            per_tenant[run.tenant] += run.in_flight
        heap = [(-r.priority, r.in_flight, i) for i, r in enumerate(runs) if r.ready]
        heapq.heapify(heap)
        taken: dict[int, list[Dispatch]] = {}
        while heap and total < self.max_in_flight:
            neg_priority, _, i = heapq.heappop(heap)
            run = runs[i]
            if per_tenant[run.tenant] >= self.max_in_flight_per_tenant:
                continue
            dispatches = run.take(1)
            if not dispatches:
                continue
            taken.setdefault(i, []).extend(dispatches)
            total += 1
            per_tenant[run.tenant] += 1
            if run.ready:
                heapq.heappush(heap, (neg_priority, run.in_flight, i))
        return [(runs[i], dispatches) for i, dispatches in taken.items()]
