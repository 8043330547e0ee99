"""Which ready steps go to the workers next: weighted fair share over tenants, then runs; caps. Pure.

The order matters only if the work queue stays short: STEPS is first-in first-out, so a step the
dispatcher publishes waits behind everything published before it. The global cap (`max_in_flight`) is
therefore sized to the worker pool's capacity, and ready steps beyond it wait here, where this
scheduler hands each freed slot out again — not in the queue, in arrival order.

Each free slot goes, in order:
1. to the tenant with the smallest weighted share of the slots (steps in flight / weight), among the
   tenants with a ready step and under their cap — max-min fairness over concurrency, which is
   deficit round-robin with one-slot quanta (ties go round-robin);
2. within that tenant, to its highest-priority run with a ready step (priority orders a tenant's own
   runs; it cannot take slots from another tenant), and among equal priorities to the run with the
   fewest steps in flight (so a tenant's small run is not stuck behind its big one).

Caps hold across dispatcher replicas: each replica enforces its share, cap / live replicas (see README).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.dispatcher.state import Dispatch, RunPhase, RunState


@dataclass
class Scheduler:
    """Hands out free slots one at a time, fairly across tenants, then across a tenant's runs."""

    max_in_flight: int
    max_in_flight_per_tenant: int
    tenant_weights: Mapping[str, float] = field(default_factory=dict)  # absent: 1
    replicas: int = 1  # live dispatcher replicas: each holds its share of the caps
    _turn: int = 0  # rotates the tie-break between equally served tenants (the round-robin of DRR)

    def share(self, cap: int) -> int:
        """This replica's part of a global cap (at least 1, so every replica makes progress)."""
        return max(1, math.ceil(cap / max(1, self.replicas)))

    def fill(self, runs: Iterable[RunState]) -> list[tuple[RunState, list[Dispatch]]]:
        """Queue ready steps across `runs` until every cap is reached; the dispatches per run."""
        runs = [r for r in runs if r.phase is RunPhase.RUNNING]
        total_cap, tenant_cap = self.share(self.max_in_flight), self.share(self.max_in_flight_per_tenant)
        total = sum(r.in_flight for r in runs)
        per_tenant = Counter[str]()
        by_tenant: dict[str, list[RunState]] = {}
        for run in runs:
            per_tenant[run.tenant] += run.in_flight
            by_tenant.setdefault(run.tenant, []).append(run)
        tenants = sorted(by_tenant)
        if tenants:
            self._turn = (self._turn + 1) % len(tenants)
            tenants = tenants[self._turn :] + tenants[: self._turn]
        order = {tenant: i for i, tenant in enumerate(tenants)}
        taken: dict[str, tuple[RunState, list[Dispatch]]] = {}
        while total < total_cap:
            candidates = [t for t in tenants if per_tenant[t] < tenant_cap and any(r.ready for r in by_tenant[t])]
            if not candidates:
                break
            tenant = min(candidates, key=lambda t: (per_tenant[t] / self.tenant_weights.get(t, 1.0), order[t]))
            ready = [r for r in by_tenant[tenant] if r.ready]
            run = min(ready, key=lambda r: (-r.priority, r.in_flight))
            # One tenant with one ready run would get every slot one at a time: give them at once.
            alone = len(candidates) == 1 and len(ready) == 1
            dispatches = run.take(min(total_cap - total, tenant_cap - per_tenant[tenant]) if alone else 1)
            if not dispatches:  # the run's own cap: let its tenant's other runs have the slot
                by_tenant[tenant] = [r for r in by_tenant[tenant] if r is not run]
                continue
            taken.setdefault(run.run_id, (run, []))[1].extend(dispatches)
            total += len(dispatches)
            per_tenant[tenant] += len(dispatches)
        return list(taken.values())
