"""The HTML report is self-contained (no network) and shows every chart; the terminal report renders."""

from __future__ import annotations

import re

from rich.console import Console

from swarm.analytics import RunAnalysis, StepSpan, concurrency, critical_path, lower_bound_ms
from swarm.report import render_html, render_terminal


def span(step_id: str, start: float, end: float, deps: tuple[str, ...] = ()) -> StepSpan:
    return StepSpan(step_id=step_id, agent_id="a", outcome="succeeded", attempts_count=1, queued_at=start,
                    started_at=start, finished_at=end, run_ms=(end - start) * 1000, queued_ms=0.0,
                    prompt_tokens=1, completion_tokens=1, depends_on=deps)  # fmt: skip


def diamond() -> list[StepSpan]:
    return [span("scope", 0, 1), span("fast", 1, 2, ("scope",)), span("slow", 1, 5, ("scope",)),
            span("reduce", 5, 6, ("fast", "slow"))]  # fmt: skip


def analysis() -> RunAnalysis:
    steps = diamond()
    path = critical_path(steps)
    return RunAnalysis(
        run_id="r1", run={"status": "completed", "goal": "<b>goal</b>"}, steps=steps, makespan_ms=6000.0,
        critical_path=path, critical_path_ms=6000.0, lower_bound_ms=lower_bound_ms(steps),
        concurrency=concurrency(steps), stragglers=[{"step_id": "slow", "agent_id": "a", "run_ms": 4000.0, "x_median": 4.0}],
        failures=[{"kind": "failed", "reason": "boom", "events_count": 1, "steps_count": 1}],
        tokens=[{"agent_id": "a", "model": "m", "calls_count": 5, "prompt_tokens": 10, "completion_tokens": 20,
                 "cost_usd": 0.01}],
        inference={}, queued_ms_total=0.0, running_ms_total=9500.0,
    )  # fmt: skip


def test_html_report_is_self_contained_with_all_charts() -> None:
    html = render_html(analysis())
    assert html.count("<svg") == 4  # timeline, concurrency, latency histogram, tokens by agent
    assert not re.search(r"<script|<link|src=|@import|url\(", html)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    assert "&lt;b&gt;goal&lt;/b&gt;" in html  # escaped
    assert html.count('stroke="#c5221f"') == 3  # the three critical steps are outlined


def test_terminal_report_renders() -> None:
    console = Console(record=True, width=120)
    console.print(render_terminal(analysis()))
    text = console.export_text()
    assert "Critical path" in text and "slow" in text and "boom" in text
