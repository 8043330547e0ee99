"""A run as a follower sees it: per-agent turns and current steps from the planned and progress events."""

from __future__ import annotations

from rich.console import Console

from swarm.contracts import (
    AgentSpec,
    Plan,
    PlanSource,
    RunExecuted,
    RunPlanned,
    RunProgress,
    RunSummary,
    StepSpec,
    utc_now,
)
from swarm.ops.runview import SPAWNED_AGENT, RunView


def planned(n_agents: int = 3, turns: int = 2) -> RunPlanned:
    agents = tuple(AgentSpec(id=f"a{i}", role="lead" if i == 0 else "analyst") for i in range(n_agents))
    steps = []
    for turn in range(turns):
        for i in range(n_agents):
            deps = (f"a{i}t{turn - 1}",) if turn else ()
            steps.append(StepSpec(id=f"a{i}t{turn}", agent_id=f"a{i}", instruction="work", depends_on=deps))
    return RunPlanned(
        run_id="r1", tenant="default", goal="g", plan=Plan(agents=agents, steps=tuple(steps)),
        source=PlanSource.EXPLICIT, submitted_at=utc_now(),
    )  # fmt: skip


def progress(finished: tuple[str, ...], succeeded: int, total: int = 6) -> RunProgress:
    return RunProgress(
        run_id="r1", tenant="default", steps_total=total, steps_queued=1, steps_succeeded=succeeded,
        steps_failed=0, retries_count=0, finished_step_ids=finished,
    )  # fmt: skip


def test_agent_lines_follow_finished_steps() -> None:
    view = RunView("r1")
    view.apply(planned(), now=0.0)
    lines = {a.agent_id: a for a in view.agent_lines()}
    assert [(a.steps_done, a.steps_total, a.current_step) for a in lines.values()] == [
        (0, 2, "a0t0"), (0, 2, "a1t0"), (0, 2, "a2t0")
    ]
    view.apply(progress(("a0t0",), 1), now=2.0)
    view.apply(progress(("a0t1", "a1t0"), 3), now=3.0)
    lines = {a.agent_id: a for a in view.agent_lines()}
    assert (lines["a0"].steps_done, lines["a0"].current_step) == (2, None) and lines["a0"].finished
    assert (lines["a1"].steps_done, lines["a1"].current_step, lines["a1"].current_since) == (1, "a1t1", 3.0)
    assert (lines["a2"].steps_done, lines["a2"].current_step, lines["a2"].current_since) == (0, "a2t0", 0.0)
    assert view.steps_done == 3 and view.steps_per_s() == 2.0


def test_a_redelivered_finished_set_changes_nothing() -> None:
    view = RunView("r1")
    view.apply(planned(), now=0.0)
    view.apply(progress(("a0t0",), 1), now=1.0)
    before = view.agent_lines()
    view.apply(progress(("a0t0",), 1), now=2.0)  # a dispatcher takeover reports every finished step again
    assert view.agent_lines() == before


def test_spawned_steps_get_a_line_of_their_own() -> None:
    view = RunView("r1")
    view.apply(planned(), now=0.0)
    view.apply(progress(("a0t0", "x1"), 2, total=8), now=1.0)
    spawned = next(a for a in view.agent_lines() if a.agent_id == SPAWNED_AGENT)
    assert (spawned.steps_done, spawned.steps_total) == (1, 2)


def test_three_hundred_agents_show_top_n_and_a_count() -> None:
    view = RunView("r1")
    view.apply(planned(n_agents=300, turns=2), now=0.0)
    view.apply(progress(tuple(f"a{i}t0" for i in range(100)), 100, total=600), now=1.0)
    console = Console(width=100, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(view.agents_table(10, now=5.0, width=100))
    lines = console.export_text().splitlines()
    assert len(lines) == 12  # header, 10 agents, the count
    assert "… and 290 more agents (300 at work, 0 waiting, 0 done in all)" in lines[-1]
    assert "a100" in lines[1] and "5.0s" in lines[1]  # longest-waiting current step first


def test_after_the_executed_event_every_agent_is_done() -> None:
    view = RunView("r1")
    view.apply(planned(), now=0.0)
    view.apply(progress(("a0t0",), 1), now=1.0)  # the dispatcher's last steps finish with no progress event
    summary = RunSummary(
        agents_count=3, steps_total=6, steps_succeeded=6, steps_failed=0, retries_count=0, prompt_tokens=0,
        completion_tokens=0, wall_ms=5.0,
    )  # fmt: skip
    view.apply(RunExecuted(run_id="r1", tenant="default", goal="g", sink_step_ids=("a0t1",), summary=summary,
                           submitted_at=utc_now()), now=2.0)  # fmt: skip
    assert view.status == "synthesizing" and view.steps_done == 6
    assert all(a.finished and a.current_step is None for a in view.agent_lines())
