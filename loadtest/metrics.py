"""Pure computations of the load-test figures: percentiles, the critical-path bound, efficiency, accounting."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from swarm.contracts import StepEvent, StepEventKind
from swarm.dag import longest_chain

# A step is accounted for by exactly one of these (a cancelled step never reached a worker's outcome).
TERMINAL_STEP_KINDS = (StepEventKind.SUCCEEDED, StepEventKind.DEAD_LETTERED, StepEventKind.CANCELLED)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def critical_path_s(depends_on: Mapping[str, tuple[str, ...]], latency_s: Mapping[str, float]) -> float:
    """The makespan's lower bound: the longest chain of simulated latencies through the DAG."""
    length, _ = longest_chain(depends_on, latency_s)
    return float(length)


def efficiency(critical_path_s: float, makespan_s: float | None) -> float | None:
    """critical_path_s / makespan_s; None when there is no bound (zero latency) or no makespan."""
    if not makespan_s or makespan_s <= 0 or critical_path_s <= 0:
        return None
    return critical_path_s / makespan_s


def rate(count: int, seconds: float | None) -> float | None:
    """count / seconds, or None without a positive duration."""
    return count / seconds if seconds and seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass
class StepAccounting:
    """What the EVENTS stream says about a run's steps."""

    latencies_ms: list[float] = field(default_factory=list)  # duration_ms of every 'succeeded' event
    terminal: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # step -> terminal event ids
    faulted: set[str] = field(default_factory=set)  # steps with a failed attempt (retried or dead-lettered)
    retried: int = 0
    events: int = 0
    event_ids: set[str] = field(default_factory=set)  # distinct: what the event log must hold, once each
    spawned_by: dict[str, str] = field(default_factory=dict)  # spawned step -> its parent
    spawned_ready: set[str] = field(default_factory=set)  # spawned steps that needed nothing but their parent
    first_queued_at: dict[str, datetime] = field(default_factory=dict)
    started_at: dict[tuple[str, int], datetime] = field(default_factory=dict)  # (step, attempt), worker clock
    succeeded: dict[str, tuple[int, float]] = field(default_factory=dict)  # step -> its attempt, duration_ms

    def add(self, event: StepEvent) -> None:
        """Take one step event into account (duplicates by event id count once)."""
        self.events += 1
        self.event_ids.add(event.event_id)
        if event.kind is StepEventKind.QUEUED:
            if event.attempt == 1:
                self.first_queued_at[event.step_id] = event.at
            if parent := event.attributes.get("spawned_by"):
                self.spawned_by[event.step_id] = parent
                if event.attributes.get("depends_on") == parent:  # ready the moment its parent succeeded
                    self.spawned_ready.add(event.step_id)
        elif event.kind is StepEventKind.STARTED:
            self.started_at[(event.step_id, event.attempt)] = event.at
        if event.kind in TERMINAL_STEP_KINDS:
            if event.event_id in self.terminal[event.step_id]:
                return
            self.terminal[event.step_id].add(event.event_id)
            if event.kind is StepEventKind.SUCCEEDED:
                self.latencies_ms.append(event.duration_ms)
                self.succeeded[event.step_id] = (event.attempt, event.duration_ms)
            elif event.kind is StepEventKind.DEAD_LETTERED:
                self.faulted.add(event.step_id)
        elif event.kind is StepEventKind.RETRIED:
            self.retried += 1
            self.faulted.add(event.step_id)

    def spawn_to_dispatch_ms(self) -> list[float]:
        """Per spawned step that needed nothing but its parent: from the parent's end on the worker (which
        reported the spawn) to the step's first dispatch."""
        finished_at = {
            step: self.started_at[(step, attempt)] + timedelta(milliseconds=duration_ms)
            for step, (attempt, duration_ms) in self.succeeded.items()
            if (step, attempt) in self.started_at
        }
        return [
            (self.first_queued_at[step] - finished_at[parent]).total_seconds() * 1000
            for step, parent in self.spawned_by.items()
            if step in self.spawned_ready and step in self.first_queued_at and parent in finished_at
        ]

    def unaccounted(self, step_ids: Iterable[str]) -> list[str]:
        """Steps without exactly one terminal event (none: lost; several: counted twice)."""
        return [s for s in step_ids if len(self.terminal.get(s, ())) != 1]


def steps_lost(steps_total: int, succeeded: int, failed: int, cancelled: int, unaccounted: int) -> int:
    """Accepted steps the run never accounted for: by its summary, or by its events, whichever says more."""
    return max(steps_total - (succeeded + failed + cancelled), unaccounted)


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 and p99 of step latencies, in ms."""
    p50, p99 = percentile(latencies_ms, 50), percentile(latencies_ms, 99)
    return {"p50": round(p50, 2) if p50 is not None else None, "p99": round(p99, 2) if p99 is not None else None}


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (rounded to 4 decimals: these are figures for people)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def combine_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one scenario as one record: counts summed, times and rates as medians."""
    if len(runs) == 1:
        return dict(runs[0])
    first = runs[0]
    combined: dict[str, Any] = {}
    summed = ("steps_total", "steps_succeeded", "steps_failed", "steps_cancelled", "steps_lost", "retries_count",
              "faults_injected", "events_recorded", "events_not_recorded", "step_ends_recorded_twice")  # fmt: skip
    for key, value in first.items():
        if key in summed:  # None in every run: not measured (not 0)
            values = [r.get(key) for r in runs]
            combined[key] = None if all(v is None for v in values) else sum(int(v or 0) for v in values)
        elif isinstance(value, dict) and all(v is None or isinstance(v, int | float) for v in value.values()):
            combined[key] = {k: median_or_none((r.get(key) or {}).get(k) for r in runs) for k in value}
        elif isinstance(value, bool) or not isinstance(value, int | float) or value is None:
            combined[key] = value
        else:
            combined[key] = median_or_none(r.get(key) for r in runs)
    for key in first:  # keys that are None in the first run but numbers later
        if first[key] is None and any(isinstance(r.get(key), int | float) for r in runs):
            combined[key] = median_or_none(r.get(key) for r in runs)
    return combined
