"""The HTML report is self-contained (no network), leads with the answer and shows every chart and output;
the terminal report renders."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from swarm.ops.analytics import (
    RunAnalysis,
    StepSpan,
    concurrency,
    lower_bound_ms,
    observed_critical_path,
    token_totals,
)
from swarm.ops.report import render_html, render_terminal, summary_rows


def span(step_id: str, start: float, end: float, deps: tuple[str, ...] = ()) -> StepSpan:
    return StepSpan(step_id=step_id, agent_id="a", outcome="succeeded", attempts_count=1, queued_at=start,
                    started_at=start, finished_at=end, run_ms=(end - start) * 1000, queued_ms=0.0,
                    prompt_tokens=1, completion_tokens=1, depends_on=deps)  # fmt: skip


def diamond() -> list[StepSpan]:
    return [span("scope", 0, 1), span("fast", 1, 2, ("scope",)), span("slow", 1, 5, ("scope",)),
            span("reduce", 5, 6, ("fast", "slow"))]  # fmt: skip


TOKENS = [
    {"phase": "planning", "agent_id": "planner", "model": "m", "calls_count": 1, "failed_count": 0,
     "prompt_tokens": 100, "completion_tokens": 200, "cost_usd": 0.001},
    {"phase": "steps", "agent_id": "a", "model": "m", "calls_count": 5, "failed_count": 1, "prompt_tokens": 10,
     "completion_tokens": 20, "cost_usd": 0.01},
    {"phase": "synthesis", "agent_id": "aggregator", "model": "m", "calls_count": 1, "failed_count": 0,
     "prompt_tokens": 7, "completion_tokens": 3, "cost_usd": 0.0001},
]  # fmt: skip


def analysis(**changes: Any) -> RunAnalysis:
    steps = diamond()
    path = observed_critical_path(steps)
    fields: dict[str, Any] = dict(
        run_id="r1", run={"status": "completed", "goal": "<b>goal</b>"}, steps=steps, makespan_ms=6000.0,
        critical_path=path, critical_path_ms=6000.0, lower_bound_ms=lower_bound_ms(steps),
        concurrency=concurrency(steps), stragglers=[{"step_id": "slow", "agent_id": "a", "run_ms": 4000.0, "x_median": 4.0}],
        failures=[{"kind": "failed", "reason": "boom", "events_count": 1, "steps_count": 1}],
        tokens=TOKENS, inference={}, queued_ms_total=0.0, running_ms_total=9500.0,
        answer="The <answer>, in prose.", outputs={"scope": "scoped <it>", "slow": "slow output"},
        token_totals=token_totals(TOKENS), summary_tokens=(17, 23),
    )  # fmt: skip
    fields.update(changes)
    return RunAnalysis(**fields)


def test_html_report_is_self_contained_with_all_charts() -> None:
    html = render_html(analysis())
    assert html.count("<svg") == 3  # concurrency, latency histogram, tokens by agent (the timeline is HTML)
    assert not re.search(r"<script|<link|src=|@import|url\(", html)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    assert "&lt;b&gt;goal&lt;/b&gt;" in html  # escaped
    assert html.count("b succeeded crit") == 2 * 3  # the three critical steps are outlined, in lane and in row


def test_html_report_leads_with_the_answer_and_shows_every_output_by_its_bar() -> None:
    html = render_html(analysis())
    assert html.index("The &lt;answer&gt;, in prose.") < html.index("<h2>Summary</h2>")
    assert html.count('class="step"') == 4
    # scope's output sits in scope's row, right after its bar; a step without output says so
    row = html[html.index('id="step-scope"') :]
    row = row[: row.index("</details>")]
    assert 'class="b succeeded crit"' in row and "<pre class=out>scoped &lt;it&gt;</pre>" in row
    assert html.count("no output recorded") == 2
    assert 'class="step" open' in html  # a small run shows its outputs opened


def test_a_failed_run_leads_with_its_error() -> None:
    html = render_html(analysis(answer=None, run={"status": "failed", "goal": "g", "error": "no quorum"}))
    assert "<h2>Error</h2>" in html and "failed: no quorum" in html and "<h2>Answer</h2>" not in html


def test_tokens_are_split_by_phase_and_the_run_summary_figure_is_explained() -> None:
    rows = dict(summary_rows(analysis()))
    assert rows["tokens, all inference calls"].startswith("117 prompt + 223 completion in 7 calls")
    assert rows["tokens by phase"] == (
        "planning 100 + 200 (1 call) \u00b7 steps 10 + 20 (5 calls, 1 failed) \u00b7 synthesis 7 + 3 (1 call)"
    )
    assert rows["tokens, run summary"].startswith("17 prompt + 23 completion: step results and synthesis, not planning")
    assert "against" not in rows["tokens, run summary"]  # 17 + 23 is steps + synthesis exactly
    off = dict(summary_rows(analysis(summary_tokens=(20, 23))))
    assert "+3 + +0 against the steps' and synthesis' calls" in off["tokens, run summary"]


def test_terminal_report_renders() -> None:
    console = Console(record=True, width=120)
    console.print(render_terminal(analysis()))
    text = console.export_text()
    assert "Critical path" in text and "slow" in text and "boom" in text
    assert text.index("The <answer>, in prose.") < text.index("Run r1")
    assert "planner" in text and "aggregator" in text and "2 step outputs" in text


def test_terminal_report_cuts_long_answers_and_token_tables() -> None:
    many = [dict(TOKENS[1], agent_id=f"agent-{i}") for i in range(50)]
    console = Console(record=True, width=160)
    console.print(render_terminal(analysis(answer="x" * 5000, tokens=many), answer_chars=100, token_rows_max=10))
    text = console.export_text()
    assert "4900 more characters" in text and "… 40 more" in text and "agent-10" not in text


def test_lanes_are_in_natural_order() -> None:
    steps = [span(f"s{i}", 0, 1) for i in (10, 2, 1)]
    steps = [StepSpan(**{**vars(s), "agent_id": f"agent-{s.step_id[1:]}"}) for s in steps]
    html = render_html(analysis(steps=steps, critical_path=[]))
    assert html.index(">agent-1 \u00b7 s1<") < html.index(">agent-2 \u00b7 s2<") < html.index(">agent-10 \u00b7 s10<")


def test_missing_sub_agents_are_listed_with_their_last_error() -> None:
    missing = [{"agent_id": f"a{i}", "role": "<analyst>", "step_id": f"s{i}", "error": f"boom {i}"} for i in range(25)]
    html = render_html(analysis(missing_agents=missing))
    section = html[html.index("<h2>Missing sub-agents</h2>") :]
    assert "25 agents whose final turn did not succeed" in section and "boom 24" in section
    assert "&lt;analyst&gt;" in section  # escaped
    console = Console(record=True, width=160)
    console.print(render_terminal(analysis(missing_agents=missing)))
    text = console.export_text()
    assert "Missing sub-agents (25)" in text and "boom 19" in text and "boom 20" not in text and "… 5 more" in text
    assert "Missing sub-agents" not in render_html(analysis())
