"""A run's live state as a follower sees it, from its RUNS events alone: overall counts and one line per agent.

A tenant may read only its runs' lifecycle events, so everything here is derived from the planned event
(agents, steps, dependencies) and the progress events (counts, and the steps finished since the previous
one). A step is *current* when it is not finished and every dependency is: it waits on the queue or runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from swarm.contracts import (
    TERMINAL_RUN_EVENTS,
    RunEvent,
    RunEventKind,
    RunPlanned,
    RunProgress,
    RunStatus,
    StepSpec,
)

SPAWNED_AGENT = "(spawned)"  # steps added by dynamic spawn are not in the plan: their agent is unknown here


@dataclass
class AgentLine:
    """One agent's progress: turns done of its total, and the step it is on."""

    agent_id: str
    role: str
    steps_done: int
    steps_total: int
    current_step: str | None
    current_since: float | None  # monotonic time the current step became ready

    @property
    def finished(self) -> bool:
        """Every turn of the agent is done."""
        return self.steps_done >= self.steps_total


@dataclass
class RunView:
    """Everything a follower knows about one run, updated event by event."""

    run_id: str
    status: RunStatus = RunStatus.PLANNING
    goal: str = ""
    steps_total: int = 0
    steps_succeeded: int = 0
    steps_failed: int = 0
    steps_queued: int = 0
    retries_count: int = 0
    started_at: float = field(default_factory=time.monotonic)
    agents: dict[str, str] = field(default_factory=dict)  # agent -> role
    steps: dict[str, StepSpec] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    ready_at: dict[str, float] = field(default_factory=dict)  # step -> when its last dependency finished
    rate_samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, steps finished)

    def apply(self, event: RunEvent, now: float | None = None) -> None:
        """Fold one lifecycle event into the view."""
        now = time.monotonic() if now is None else now
        if isinstance(event, RunPlanned):
            self._plan(event, now)
        elif isinstance(event, RunProgress):
            self._progress(event, now)
        elif event.kind == RunEventKind.EXECUTED:
            self.status = RunStatus.SYNTHESIZING
            self.finished.update(self.steps)  # every step is over (the last ones were never in a progress event)
            self._counts(event.summary.steps_succeeded, event.summary.steps_failed, now)  # type: ignore[union-attr]
            self.steps_queued = 0
        elif event.kind in TERMINAL_RUN_EVENTS:
            self.status = RunStatus(event.kind.value)  # the terminal events are named as the statuses
            self.steps_queued = 0

    def _plan(self, event: RunPlanned, now: float) -> None:
        self.status, self.goal = RunStatus.RUNNING, event.goal
        if event.plan is None:  # by reference, and not resolved (SwarmClient.events resolves it): counts only
            self.steps_total = max(self.steps_total, event.steps_count)
            return
        self.steps_total = max(self.steps_total, len(event.plan.steps))
        self.agents = {a.id: a.role for a in event.plan.agents}
        self.steps = {s.id: s for s in event.plan.steps}
        self._mark_ready(now)

    def _progress(self, event: RunProgress, now: float) -> None:
        if self.status is RunStatus.PLANNING:
            self.status = RunStatus.RUNNING
        self.steps_total, self.steps_queued, self.retries_count = event.steps_total, event.steps_queued, event.retries_count
        self.finished.update(event.finished_step_ids)
        self._counts(event.steps_succeeded, event.steps_failed, now)
        self._mark_ready(now)

    def _counts(self, succeeded: int, failed: int, now: float) -> None:
        self.steps_succeeded, self.steps_failed = succeeded, failed
        self.rate_samples.append((now, succeeded + failed))
        del self.rate_samples[:-20]

    def _mark_ready(self, now: float) -> None:
        for step_id, step in self.steps.items():
            if step_id not in self.ready_at and step_id not in self.finished:
                if all(dep in self.finished or dep not in self.steps for dep in step.depends_on):
                    self.ready_at[step_id] = now

    @property
    def steps_done(self) -> int:
        """Steps finished, succeeded or failed."""
        return self.steps_succeeded + self.steps_failed

    def steps_per_s(self, window_s: float = 5.0) -> float:
        """Steps finished per second over the last `window_s` of progress events."""
        if len(self.rate_samples) < 2:
            return 0.0
        last_t, last_n = self.rate_samples[-1]
        first_t, first_n = next(((t, n) for t, n in self.rate_samples if last_t - t <= window_s), self.rate_samples[0])
        return (last_n - first_n) / (last_t - first_t) if last_t > first_t else 0.0

    def agent_lines(self) -> list[AgentLine]:
        """One line per agent, in plan order; steps not in the plan (spawned) under one line of their own."""
        lines: dict[str, AgentLine] = {
            agent_id: AgentLine(agent_id, role, 0, 0, None, None) for agent_id, role in self.agents.items()
        }
        for step_id, step in self.steps.items():
            line = lines.setdefault(step.agent_id, AgentLine(step.agent_id, "?", 0, 0, None, None))
            line.steps_total += 1
            if step_id in self.finished:
                line.steps_done += 1
            elif step_id in self.ready_at and line.current_step is None and self.status is RunStatus.RUNNING:
                line.current_step, line.current_since = step_id, self.ready_at[step_id]
        spawned_done = len(self.finished - self.steps.keys())
        spawned_total = max(0, self.steps_total - len(self.steps))
        if spawned_total:
            lines[SPAWNED_AGENT] = AgentLine(SPAWNED_AGENT, "spawned steps", spawned_done, spawned_total, None, None)
        return list(lines.values())

    def agents_table(self, limit: int, now: float | None = None, width: int | None = None) -> Group:
        """The agents at work first (longest-waiting current step first), then the others; `limit` lines and a
        count of the rest."""
        now = time.monotonic() if now is None else now
        lines = self.agent_lines()
        active = sorted((a for a in lines if a.current_step), key=lambda a: now if a.current_since is None else a.current_since)
        idle = [a for a in lines if not a.current_step and not a.finished]
        done = [a for a in lines if a.finished]
        shown = (active + idle + done)[:limit]
        table = Table(box=None, pad_edge=False, show_edge=False, width=width, expand=width is not None)
        table.add_column("agent", no_wrap=True, overflow="ellipsis", max_width=24)
        table.add_column("role", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("turns", justify="right", no_wrap=True)
        table.add_column("current step", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("for", justify="right", no_wrap=True)
        for a in shown:
            since = f"{now - a.current_since:.1f}s" if a.current_since is not None else ""
            if a.current_step is not None:
                step = f"{a.current_step}: {' '.join(self.steps[a.current_step].instruction.split())}"
            else:
                step = "done" if a.finished else "waiting on dependencies"
            table.add_row(a.agent_id, a.role, f"{a.steps_done}/{a.steps_total}", step, since)
        rest = len(lines) - len(shown)
        if rest <= 0:
            return Group(table)
        summary = f"… and {rest} more agents ({len(active)} at work, {len(idle)} waiting, {len(done)} done in all)"
        return Group(table, Text(summary, style="dim", no_wrap=True, overflow="ellipsis"))
