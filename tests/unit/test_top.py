"""`swarm top`'s screen from a known state: dead, restarted and missing replicas, rates per replica."""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

from swarm.contracts import AgentSpec, Plan, PlanSource, RunPlanned, RunProgress, StepSpec, utc_now
from swarm.ops.runview import RunView
from swarm.ops.top import Rate, ServiceHealth, TopState, render


def screen(state: TopState, width: int = 100, height: int = 30) -> str:
    console = Console(width=width, height=height, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(render(state, ConsoleDimensions(width, height)))
    return console.export_text()


def test_rate_counts_each_replica_and_ignores_one_missing_from_a_probe() -> None:
    rate = Rate()
    rate.update(0.0, {"w1": 100, "w2": 50})
    rate.update(1.0, {"w1": 110})  # w2 late to answer
    rate.update(2.0, {"w1": 120, "w2": 70})
    assert rate.value == 20.0  # (20 + 20) / 2 s
    rate.update(3.0, {"w1": 130, "w3": 5})  # w2 died, w3 started: no negative or made-up growth
    assert rate.value == 10.0


def test_screen_shows_runs_agents_and_what_is_dead() -> None:
    state = TopState("nats://example:4222")
    state.services = {
        "recorder": ServiceHealth("recorder", missed=2),
        "worker": ServiceHealth("worker", replies=[{"instance": "h:1", "running": 3, "concurrency": 64}],
                                most_replicas=2),
        "gateway": ServiceHealth("gateway", replies=[{"instance": "h:2", "queued": 7, "rejected_count": 2}],
                                 changed_at=None),
    }  # fmt: skip
    plan = Plan(
        agents=(AgentSpec(id="a0", role="researcher"), AgentSpec(id="a1", role="editor")),
        steps=(StepSpec(id="s0", agent_id="a0", instruction="x"), StepSpec(id="s1", agent_id="a1", instruction="y",
                                                                           depends_on=("s0",))),
    )  # fmt: skip
    view = RunView("20261130-120000-abcdef")
    view.apply(RunPlanned(run_id=view.run_id, tenant="t", goal="g", plan=plan, source=PlanSource.EXPLICIT,
                          submitted_at=utc_now()))  # fmt: skip
    view.apply(RunProgress(run_id=view.run_id, tenant="t", steps_total=2, steps_queued=1, steps_succeeded=1,
                           steps_failed=0, retries_count=1, finished_step_ids=("s0",)))  # fmt: skip
    state.runs[view.run_id], state.selected = view, view.run_id
    text = screen(state)
    assert "recorder DEAD" in text and "worker x1 of 2" in text and "gateway x1" in text
    assert "3 in flight of 64 slots" in text and "queue 7" in text and "overloaded 2" in text
    assert ">20261130-120000-abcdef" in text and "1/2" in text
    assert "Agents of 20261130-120000-abcdef (2 agents)" in text
    assert any("a1" in line and "editor" in line and "0/1" in line and "s1" in line for line in text.splitlines())
