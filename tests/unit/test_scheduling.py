"""The fair scheduler: tenants share the slots by weight, priorities order a tenant's own runs, caps hold."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.dispatcher.scheduling import Scheduler
from services.dispatcher.state import RunState
from swarm.contracts import AgentSpec, Plan, RunPlanned, StepResult, StepSpec, StepStatus, utc_now


def run_of(run_id: str, tenant: str, n_steps: int, priority: int = 0, chain: bool = False) -> RunState:
    steps = tuple(
        StepSpec(id=f"s{i}", agent_id="a", instruction="do", depends_on=(f"s{i - 1}",) if chain and i else ())
        for i in range(n_steps)
    )
    plan = Plan(agents=(AgentSpec(id="a", role="r"),), steps=steps)
    planned = RunPlanned(
        run_id=run_id, tenant=tenant, goal="g", plan=plan, source="explicit", priority=priority, submitted_at=utc_now()
    )
    run = RunState(planned, max_in_flight=10_000)
    run.start()
    return run


def finish(run: RunState, step_id: str) -> None:
    now = utc_now()
    run.apply(StepResult(
        run_id=run.run_id, step_id=step_id, attempt=1, status=StepStatus.SUCCEEDED, started_at=now,
        finished_at=now + timedelta(seconds=1), worker_id="w",
    ))  # fmt: skip


def counts(filled: list[tuple[RunState, list]]) -> dict[str, int]:  # type: ignore[type-arg]
    return {run.run_id: len(dispatches) for run, dispatches in filled}


def test_a_late_small_run_of_another_tenant_gets_the_freed_slots_not_the_queue_behind_the_big_one() -> None:
    scheduler = Scheduler(max_in_flight=100, max_in_flight_per_tenant=10_000)
    big = run_of("big", "acme", 4000)
    assert counts(scheduler.fill([big])) == {"big": 100}  # the pool is full of the big run
    small = run_of("small", "umbrella", 20)
    for i in range(10):  # ten of the big run's steps finish
        finish(big, f"s{i}")
    assert counts(scheduler.fill([big, small])) == {"small": 10}  # every freed slot: the tenant with fewer
    for i in range(10, 20):
        finish(big, f"s{i}")
    assert counts(scheduler.fill([big, small])) == {"small": 10}


def test_tenants_share_by_weight_and_priority_does_not_cross_tenants() -> None:
    pushy = run_of("pushy", "acme", 100, priority=10)
    modest = run_of("modest", "umbrella", 100, priority=-10)
    assert counts(Scheduler(30, 10_000).fill([pushy, modest])) == {"pushy": 15, "modest": 15}
    heavy = run_of("heavy", "acme", 100)
    light = run_of("light", "umbrella", 100)
    assert counts(Scheduler(30, 10_000, {"acme": 2.0}).fill([heavy, light])) == {"heavy": 20, "light": 10}


def test_priority_orders_a_tenants_own_runs_and_equal_ones_share() -> None:
    low, high = run_of("low", "acme", 50, priority=0), run_of("high", "acme", 50, priority=3)
    assert counts(Scheduler(20, 10_000).fill([low, high])) == {"high": 20}
    one, two = run_of("one", "acme", 50), run_of("two", "acme", 50)
    assert counts(Scheduler(20, 10_000).fill([one, two])) == {"one": 10, "two": 10}


def test_caps_are_split_among_live_replicas() -> None:
    scheduler = Scheduler(max_in_flight=100, max_in_flight_per_tenant=30, replicas=3)
    runs = [run_of("a", "acme", 100), run_of("b", "umbrella", 100)]
    assert counts(scheduler.fill(runs)) == {"a": 10, "b": 10}  # 30 / 3 replicas per tenant
    assert Scheduler(100, 100, replicas=3).share(100) == 34 and Scheduler(5, 5, replicas=9).share(5) == 1


def test_in_the_rounds_the_small_run_keeps_close_to_its_solo_makespan() -> None:
    """A discrete simulation (unit-time steps, 64 slots): a 20-step chain next to a 4,000-step run."""

    def rounds(runs: list[RunState], watch: str) -> int:
        scheduler = Scheduler(max_in_flight=64, max_in_flight_per_tenant=10_000)
        for n in range(1, 10_000):
            running = [(run, d.step_id) for run, ds in scheduler.fill(runs) for d in ds]
            running += [(run, s) for run in runs for s, st_ in run.steps.items()
                        if st_.phase.value == "queued" and (run, s) not in running]  # fmt: skip
            for run, step_id in running:
                finish(run, step_id)
            if all(st_.phase.value == "succeeded" for st_ in next(r for r in runs if r.run_id == watch).steps.values()):
                return n
        raise AssertionError("never finished")

    alone = rounds([run_of("small", "umbrella", 20, chain=True)], "small")
    shared = rounds([run_of("big", "acme", 4000), run_of("small", "umbrella", 20, chain=True)], "small")
    assert alone == 20 and shared <= 1.5 * alone


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.sampled_from("xyz"), st.integers(0, 40), st.integers(-2, 2)), min_size=1, max_size=6),
    cap=st.integers(1, 60),
    tenant_cap=st.integers(1, 60),
    replicas=st.integers(1, 3),
)
def test_caps_hold_and_no_slot_is_left_idle(
    sizes: list[tuple[str, int, int]], cap: int, tenant_cap: int, replicas: int
) -> None:
    runs = [run_of(f"r{i}", tenant, max(n, 1), priority) for i, (tenant, n, priority) in enumerate(sizes)]
    scheduler = Scheduler(cap, tenant_cap, replicas=replicas)
    scheduler.fill(runs)
    per_tenant: dict[str, int] = {}
    for run in runs:
        per_tenant[run.tenant] = per_tenant.get(run.tenant, 0) + run.in_flight
    assert sum(per_tenant.values()) <= scheduler.share(cap)
    assert all(n <= scheduler.share(tenant_cap) for n in per_tenant.values())
    if sum(per_tenant.values()) < scheduler.share(cap):  # work-conserving: whoever could take a slot has its cap
        assert all(per_tenant[r.tenant] >= scheduler.share(tenant_cap) for r in runs if r.ready)
