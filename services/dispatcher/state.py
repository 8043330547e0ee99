"""The run state machine: pure, no I/O. The dispatcher feeds it plans and results and publishes what it returns.

Every transition is idempotent: a redelivered result (same step, same attempt) or a stale one
(an earlier attempt) changes nothing, so a run's outcome is exactly-once over at-least-once delivery.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from swarm.contracts import (
    MISSING_AGENT_ERROR_CHARS,
    AgentSpec,
    MemoryMode,
    MemoryRef,
    MissingAgent,
    RunPlanned,
    RunPolicy,
    RunSummary,
    SpawnBudget,
    SpawnRequest,
    StepResult,
    StepSpec,
    StepStatus,
    cut,
    utc_now,
)
from swarm.dag import PlanError, PlanLimits, children_of, sinks, topological_order, validate_plan

# One encoder: `json.dumps` with separators builds a new one on every call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
CLOCK_SKEW = timedelta(seconds=5)
OLDEST_SUBMISSION = timedelta(days=7)  # RUNS retention: a plan cannot outlive its task by more


def _aware(at: datetime) -> datetime:
    """A time with an offset (one without is taken as UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def trusted_submitted_at(planned: RunPlanned) -> datetime:
    """The submission time durations start from: the client's claim, unless it lies after the plan
    was made (a clock ahead, a forged value) or implausibly long before; then the plan's own time."""
    planned_at, submitted_at = _aware(planned.at), _aware(planned.submitted_at)
    if planned_at - OLDEST_SUBMISSION <= submitted_at <= planned_at + CLOCK_SKEW:
        return min(submitted_at, planned_at)
    return planned_at


class StepPhase(StrEnum):
    """Where a step is in its life."""

    WAITING = "waiting"  # dependencies not finished
    READY = "ready"  # runnable, held back by the run's concurrency cap
    QUEUED = "queued"  # on the work queue or running on a worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # dead-lettered after its last attempt
    CANCELLED = "cancelled"


FINISHED = frozenset({StepPhase.SUCCEEDED, StepPhase.FAILED, StepPhase.CANCELLED})


class RunPhase(StrEnum):
    """Where a run is in its life, as far as the dispatcher is concerned."""

    RUNNING = "running"
    EXECUTED = "executed"  # every step finished, enough succeeded: on to the aggregator
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Dispatch:
    """Queue attempt `attempt` of `step_id`, not before `delay_s` from now."""

    step_id: str
    attempt: int
    delay_s: float = 0.0


@dataclass
class Outcome:
    """What the I/O layer must do after a transition."""

    dispatches: list[Dispatch] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    retried: list[tuple[str, int, str]] = field(default_factory=list)  # step, next attempt, error
    dead_lettered: list[tuple[str, str]] = field(default_factory=list)  # step, error
    cancelled: list[str] = field(default_factory=list)
    spawned: list[tuple[str, list[str]]] = field(default_factory=list)  # parent, new step ids
    run_finished: RunPhase | None = None
    changed: bool = False
    early: bool = False  # the result is ahead of this state (see `apply`): deliver it again later


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter between attempts."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay_s(self, attempt: int) -> float:
        """Delay before `attempt` (2, 3, ...)."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 2)))


@dataclass
class StepState:
    """Mutable state of one step."""

    spec: StepSpec
    phase: StepPhase = StepPhase.WAITING
    attempt: int = 0
    deps_left: int = 0
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RunState:
    """One run: its plan, the phase of every step, and its totals."""

    def __init__(
        self,
        planned: RunPlanned,
        max_in_flight: int,
        retry: RetryPolicy | None = None,
        limits: PlanLimits | None = None,
    ) -> None:
        self.limits = limits or PlanLimits()
        assert planned.plan is not None, "a plan by reference is resolved (swarm.payloads.PlanStore) first"
        # Re-validated here (cycles included): a RunPlanned is a message like any other, and a bad one must
        # not wedge us.
        validate_plan(planned.plan, self.limits)
        self.planned = planned
        self.submitted_at = trusted_submitted_at(planned)
        self.run_id = planned.run_id
        self.tenant = planned.tenant
        self.priority = planned.priority
        self.max_in_flight = max_in_flight
        self.retry = retry or RetryPolicy()
        # (parent, request) of every spawn as checkpoint JSON, encoded once: re-encoding 4,000 spawned steps
        # on every checkpoint held the dispatcher's loop ~45 ms each time.
        self._spawns_json: list[str] = []
        self._finished_json: dict[str, str] = {}  # finished step -> its checkpoint entry, encoded once
        self.agents: dict[str, AgentSpec] = {a.id: a for a in planned.plan.agents}
        self.steps: dict[str, StepState] = {s.id: StepState(spec=s) for s in planned.plan.steps}
        self.spawned_by: dict[str, str] = {}  # spawned step -> the step that spawned it
        self.agent_steps: dict[str, list[str]] = {}  # agent -> its turns, in plan (then spawn) order
        for spec in planned.plan.steps:
            self.agent_steps.setdefault(spec.agent_id, []).append(spec.id)
        self.depends_on = {s.id: tuple(dict.fromkeys(s.depends_on)) for s in planned.plan.steps}
        self.children = children_of(self.depends_on)
        self.ready: deque[str] = deque()
        self.in_flight = 0
        self.finished_count = 0  # steps succeeded, failed or cancelled: keeps the "all done?" check O(1)
        self.retries_count = 0
        self.phase = RunPhase.RUNNING
        self.error = ""
        self.started_at: datetime = utc_now()
        for step_id, deps in self.depends_on.items():
            self.steps[step_id].deps_left = len(deps)

    # ------------------------------------------------------------------ transitions

    def start(self) -> Outcome:
        """Make every step without dependencies ready; `take` queues them."""
        for step_id, state in self.steps.items():
            if state.deps_left == 0 and state.phase is StepPhase.WAITING:
                state.phase = StepPhase.READY
                self.ready.append(step_id)
        return Outcome(changed=True)

    def take(self, limit: int) -> list[Dispatch]:
        """Queue up to `limit` ready steps, within the run's own concurrency cap."""
        dispatches: list[Dispatch] = []
        while self.ready and len(dispatches) < limit and self.in_flight < self.max_in_flight:
            step_id = self.ready.popleft()
            state = self.steps[step_id]
            state.phase = StepPhase.QUEUED
            state.attempt = max(state.attempt, 1)
            self.in_flight += 1
            dispatches.append(Dispatch(step_id, state.attempt))
        return dispatches

    def apply(self, result: StepResult) -> Outcome:
        """Apply one step result; stale and duplicate results change nothing."""
        outcome = Outcome()
        state = self.steps.get(result.step_id)
        if state is None or self.phase is not RunPhase.RUNNING or state.phase in FINISHED:
            return outcome
        if state.phase is not StepPhase.QUEUED or result.attempt > state.attempt:
            # A replica that crashed got further than its last checkpoint: this result belongs to a
            # dispatch we are about to repeat (and the stream de-duplicates). Not ours to drop yet.
            outcome.early = True
            return outcome
        if result.attempt < state.attempt:
            return outcome
        outcome.changed = True
        state.prompt_tokens += result.prompt_tokens
        state.completion_tokens += result.completion_tokens
        spawn_error = ""
        if result.status is StepStatus.SUCCEEDED and result.spawn is not None:
            try:
                self._spawn(result.step_id, result.spawn)
                outcome.spawned.append((result.step_id, [s.id for s in result.spawn.steps]))
            except PlanError as exc:
                spawn_error = f"spawn rejected: {exc}"
        if result.status is StepStatus.SUCCEEDED and not spawn_error:
            self._finish(result.step_id, StepPhase.SUCCEEDED, outcome)
            outcome.succeeded.append(result.step_id)
        elif result.retryable and state.attempt < state.spec.max_attempts:
            state.attempt += 1
            self.retries_count += 1
            error = spawn_error or result.error or "failed"
            outcome.retried.append((result.step_id, state.attempt, error))
            outcome.dispatches.append(Dispatch(result.step_id, state.attempt, self.retry.delay_s(state.attempt)))
        else:
            state.error = spawn_error or result.error or "failed"
            self._finish(result.step_id, StepPhase.FAILED, outcome)
            outcome.dead_lettered.append((result.step_id, state.error))
            if self.planned.policy is RunPolicy.FAIL_FAST:
                self._end(RunPhase.FAILED, f"step {result.step_id} failed: {state.error}", outcome)
                return outcome
        self._check_done(outcome)
        return outcome

    def cancel(self, reason: str) -> Outcome:
        """Drop every step not yet finished; results still in flight will be ignored."""
        outcome = Outcome()
        if self.phase is RunPhase.RUNNING:
            self._end(RunPhase.CANCELLED, reason, outcome)
        return outcome

    # ------------------------------------------------------------------ internals

    def _finish(self, step_id: str, phase: StepPhase, outcome: Outcome) -> None:
        state = self.steps[step_id]
        state.phase = phase
        self.in_flight -= 1
        self.finished_count += 1
        # Under fail-fast a failed step ends the run; under quorum its dependents still run,
        # with the failed input marked missing, so a reduce step survives a few lost mappers.
        for child in self.children[step_id]:
            child_state = self.steps[child]
            child_state.deps_left -= 1
            if child_state.deps_left == 0 and child_state.phase is StepPhase.WAITING:
                child_state.phase = StepPhase.READY
                self.ready.append(child)

    def _spawn(self, parent_id: str, request: SpawnRequest) -> None:
        """Grow the DAG: new steps run after the parent; the parent's dependents also wait for them."""
        # The spawn tool already refused what did not fit the budget its dispatch carried; this catches
        # two steps that spent the same room at once (the later one is retried with the smaller budget).
        if len(self.agents) + len(request.agents) > self.limits.max_agents:
            raise PlanError(f"the run would have more than {self.limits.max_agents} agents")
        if len(self.steps) + len(request.steps) > self.limits.max_steps:
            raise PlanError(f"the run would have more than {self.limits.max_steps} steps")
        new_ids = [s.id for s in request.steps]
        clashes = sorted({*new_ids} & self.steps.keys()) or sorted({a.id for a in request.agents} & self.agents.keys())
        if clashes or len(set(new_ids)) != len(new_ids):
            raise PlanError(f"ids already in use: {', '.join(clashes[:5]) or 'duplicates among the new steps'}")
        agents = self.agents.keys() | {a.id for a in request.agents}
        # New steps may depend on each other and on finished steps only: an edge to an unfinished
        # step could close a cycle through the parent's dependents, which now wait for the new steps.
        allowed = {*new_ids, *(s for s, st in self.steps.items() if st.phase in FINISHED)}
        for step in request.steps:
            if step.agent_id not in agents:
                raise PlanError(f"spawned step {step.id} names unknown agent {step.agent_id}")
            if bad := [d for d in step.depends_on if d not in allowed]:
                raise PlanError(f"spawned step {step.id} depends on {bad[0]}, which is neither new nor finished")
        new_edges = {s.id: tuple(d for d in s.depends_on if d in new_ids) for s in request.steps}
        topological_order(new_edges)  # raises on a cycle among the new steps
        self._graft(parent_id, request)

    def _graft(self, parent_id: str, request: SpawnRequest) -> None:
        """Add validated spawned steps to the graph (also used when restoring a checkpoint)."""
        # Without defaults: 4,000 spawned steps must fit one KV value (1 MiB).
        dumped = request.model_dump(mode="json", exclude_defaults=True)
        self._spawns_json.append(json.dumps([parent_id, dumped], separators=(",", ":")))
        self.agents.update({a.id: a for a in request.agents})
        new_ids = [s.id for s in request.steps]
        needed = {d for s in request.steps for d in s.depends_on}
        new_sinks = [step_id for step_id in new_ids if step_id not in needed]
        old_dependents = list(self.children[parent_id])
        for step in request.steps:
            self.steps[step.id] = StepState(spec=step)
            self.spawned_by[step.id] = parent_id
            self.agent_steps.setdefault(step.agent_id, []).append(step.id)
            self.depends_on[step.id] = tuple(dict.fromkeys((parent_id, *step.depends_on)))
            self.children[step.id] = []
        for step_id in new_ids:
            for dep in self.depends_on[step_id]:
                self.children[dep].append(step_id)
        for dependent in old_dependents:
            self.depends_on[dependent] = (*self.depends_on[dependent], *new_sinks)
            for sink in new_sinks:
                self.children[sink].append(dependent)
        # The parent is still unfinished here: finishing it releases the new steps.
        for step_id in (*new_ids, *old_dependents):
            self.steps[step_id].deps_left = sum(
                1 for d in self.depends_on[step_id] if self.steps[d].phase not in FINISHED
            )

    def _end(self, phase: RunPhase, error: str, outcome: Outcome) -> None:
        self.phase = phase
        self.error = error
        for step_id, state in self.steps.items():
            if state.phase not in FINISHED:
                state.phase = StepPhase.CANCELLED
                self.finished_count += 1
                outcome.cancelled.append(step_id)
        self.ready.clear()
        self.in_flight = 0
        outcome.run_finished = phase
        outcome.changed = True

    def _check_done(self, outcome: Outcome) -> None:
        if self.phase is not RunPhase.RUNNING or self.finished_count < len(self.steps):
            return
        if self.planned.policy is RunPolicy.QUORUM:
            # The quorum counts sub-agents, not steps: an agent counts when its final turn succeeded.
            agents = len({s.spec.agent_id for s in self.steps.values()})
            missing = self.missing_agents()
            enough = agents - len(missing) >= self.planned.quorum * agents and len(missing) < agents
            shortfall = (
                f"only {agents - len(missing)} of {agents} agents' final turns succeeded "
                f"(quorum {self.planned.quorum:.0%}); missing: {', '.join(m.agent_id for m in missing[:10])}"
                + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            )
        else:
            succeeded = self.count(StepPhase.SUCCEEDED)
            enough = succeeded == len(self.steps) and succeeded > 0
            shortfall = f"only {succeeded} of {len(self.steps)} steps succeeded"
        if enough:
            self.phase = RunPhase.EXECUTED
            outcome.run_finished = RunPhase.EXECUTED
        else:
            self.phase = RunPhase.FAILED
            self.error = shortfall
            outcome.run_finished = RunPhase.FAILED

    # ------------------------------------------------------------------ views

    def memory_of(self, step_id: str) -> tuple[tuple[MemoryRef, ...], int]:
        """The agent's committed earlier turns a turn sees (by its memory policy), and how many it leaves out.

        Only succeeded attempts are named: a worker killed after writing its memory entry but before its
        result left an entry nobody reads, so a retried turn sees exactly the history as of the last success.
        """
        spec = self.steps[step_id].spec
        policy = self.agents[spec.agent_id].memory
        if policy.mode is MemoryMode.NONE:
            return (), 0
        committed = [
            MemoryRef(step_id=turn, attempt=self.steps[turn].attempt)
            for turn in self.agent_steps.get(spec.agent_id, ())
            if turn != step_id and self.steps[turn].phase is StepPhase.SUCCEEDED
        ]
        # summary: the latest turn's entry carries the rolling summary of all before it.
        shown = policy.max_turns if policy.mode is MemoryMode.LAST_TURNS else 1
        kept = committed[-shown:] if committed else []
        return tuple(kept), len(committed) - len(kept)

    def spawn_budget(self) -> SpawnBudget:
        """Room left under the run's limits for spawned agents and steps."""
        return SpawnBudget(
            agents=max(0, self.limits.max_agents - len(self.agents)),
            steps=max(0, self.limits.max_steps - len(self.steps)),
        )

    def count(self, phase: StepPhase) -> int:
        """Steps in `phase`."""
        return sum(1 for s in self.steps.values() if s.phase is phase)

    def sink_step_ids(self) -> list[str]:
        """Succeeded steps no other step depends on: the synthesis input."""
        return [s for s in sinks(self.depends_on) if self.steps[s].phase is StepPhase.SUCCEEDED]

    def missing_agents(self) -> list[MissingAgent]:
        """Agents whose final turn (their last step in dependency order) did not succeed, with their last error."""
        final: dict[str, str] = {}
        last_error: dict[str, str] = {}
        for step_id in topological_order(self.depends_on):
            state = self.steps[step_id]
            final[state.spec.agent_id] = step_id
            if state.phase is StepPhase.FAILED:
                last_error[state.spec.agent_id] = state.error
        missing = []
        for agent_id, step_id in final.items():
            state = self.steps[step_id]
            if state.phase is StepPhase.SUCCEEDED:
                continue
            error = last_error.get(agent_id) or f"its final turn {step_id} is {state.phase.value}"
            agent = self.agents.get(agent_id)
            missing.append(MissingAgent(
                agent_id=agent_id, role=agent.role if agent else "", step_id=step_id,
                error=cut(error, MISSING_AGENT_ERROR_CHARS),
            ))  # fmt: skip
        return missing

    def failed_step_ids(self) -> list[str]:
        """Steps dead-lettered."""
        return [s for s, st in self.steps.items() if st.phase is StepPhase.FAILED]

    def summary(self) -> RunSummary:
        """Totals so far; wall time from submission."""
        return RunSummary(
            agents_count=len(self.agents),
            steps_total=len(self.steps),
            steps_succeeded=self.count(StepPhase.SUCCEEDED),
            steps_failed=self.count(StepPhase.FAILED),
            steps_cancelled=self.count(StepPhase.CANCELLED),
            retries_count=self.retries_count,
            prompt_tokens=sum(s.prompt_tokens for s in self.steps.values()),
            completion_tokens=sum(s.completion_tokens for s in self.steps.values()),
            wall_ms=max(0.0, (utc_now() - self.submitted_at).total_seconds() * 1000),
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """The dynamic part of the state; the plan itself is re-read from the planned event."""
        return {
            "phase": self.phase.value,
            "error": self.error,
            "retries_count": self.retries_count,
            "steps": {
                step_id: [s.phase.value, s.attempt, s.prompt_tokens, s.completion_tokens, s.error]
                for step_id, s in self.steps.items()
                if s.phase is not StepPhase.WAITING
            },
            "spawns": [json.loads(spawn) for spawn in self._spawns_json],
        }

    def checkpoint_json(self, tenant: str) -> bytes:
        """`checkpoint()` with the run's tenant, as the JSON the dispatcher stores.

        Spawns are encoded once, and so is a finished step (it never changes again): re-encoding every step
        of a 4,000-step run each checkpoint interval was most of a long run's dispatcher time.
        """
        head = json.dumps(
            {"tenant": tenant, "phase": self.phase.value, "error": self.error, "retries_count": self.retries_count},
            separators=(",", ":"),
        )
        waiting, encoded, rows = StepPhase.WAITING, self._finished_json, []
        for step_id, s in self.steps.items():
            if s.phase is waiting:
                continue
            row = encoded.get(step_id)
            if row is None:  # a phase is a StrEnum: it encodes as its value
                fields = [s.phase, s.attempt, s.prompt_tokens, s.completion_tokens, s.error]
                row = f"{json.dumps(step_id)}:{_compact_json(fields)}"
                if s.phase in FINISHED:
                    encoded[step_id] = row
            rows.append(row)
        return f'{head[:-1]},"steps":{{{",".join(rows)}}},"spawns":[{",".join(self._spawns_json)}]}}'.encode()

    @classmethod
    def restore(
        cls,
        planned: RunPlanned,
        checkpoint: dict[str, Any],
        max_in_flight: int,
        retry: RetryPolicy | None = None,
        limits: PlanLimits | None = None,
    ) -> RunState:
        """Rebuild a run from its plan and checkpoint.

        Queued steps are not queued again: a checkpoint is written only after its dispatches were
        acknowledged by the STEPS stream, and results it has not seen are redelivered to us.
        """
        run = cls(planned, max_in_flight, retry, limits)
        run.phase = RunPhase(checkpoint["phase"])
        run.error = checkpoint["error"]
        run.retries_count = checkpoint["retries_count"]
        for parent, request in checkpoint.get("spawns", []):
            spawn = SpawnRequest.model_validate(request)
            run._graft(parent, spawn)
        for step_id, (phase, attempt, prompt_tokens, completion_tokens, error) in checkpoint["steps"].items():
            state = run.steps[step_id]
            state.phase, state.attempt, state.error = StepPhase(phase), attempt, error
            state.prompt_tokens, state.completion_tokens = prompt_tokens, completion_tokens
        for step_id, state in run.steps.items():
            state.deps_left = sum(1 for dep in run.depends_on[step_id] if run.steps[dep].phase not in FINISHED)
        run.finished_count = sum(1 for state in run.steps.values() if state.phase in FINISHED)
        if run.phase is RunPhase.RUNNING:
            for step_id, state in run.steps.items():
                if state.phase is StepPhase.QUEUED:
                    run.in_flight += 1
                elif state.phase in (StepPhase.READY, StepPhase.WAITING) and state.deps_left == 0:
                    state.phase = StepPhase.READY
                    run.ready.append(step_id)
        return run
