"""The run report: a terminal summary (rich) and a self-contained HTML page with inline SVG charts.

Self-contained means no network: no CDN, no fonts, no scripts; the charts are SVG drawn here, so the
file can be mailed, archived, or opened on an air-gapped machine.
"""

from __future__ import annotations

import html
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from swarm.ops.analytics import RunAnalysis, StepSpan

_COLORS = {"succeeded": "#4c8bf5", "failed": "#e8710a", "dead_lettered": "#d93025", "cancelled": "#9aa0a6"}
_CRITICAL = "#c5221f"
_FONT = "font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"
TERMINAL_ANSWER_CHARS = 3000  # of the answer in the terminal; the HTML report has all of it
OPEN_LANES_MAX = 60  # runs with at most this many steps show every lane's steps opened
OPEN_STEPS_MAX = 12  # ... and at most this many, every step's output opened
TOKEN_BARS_MAX = 30  # agents in the tokens chart; the rest are one bar
MISSING_AGENTS_SHOWN = 20  # missing sub-agents listed in the terminal; the HTML report and --json list all
_LABEL_W = 170
_STYLE = (
    f"body{{{_FONT};margin:24px auto;max-width:1020px;color:#202124}}h1{{font-size:22px;margin:0}}"
    "h2{font-size:16px;margin:22px 0 6px}.sub{color:#5f6368;margin:2px 0 8px;font-size:13px}"
    "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eee;padding:3px 10px 3px 0;"
    "text-align:left;vertical-align:top}th{color:#5f6368;font-weight:600}.legend{font-size:12px;margin:4px 0}"
    ".key{margin-right:14px}.key i{display:inline-block;width:12px;height:10px;margin-right:4px;"
    "vertical-align:middle}.note{color:#b06000}section{margin-bottom:10px}"
    ".answer,.error{white-space:pre-wrap;font-size:14px;line-height:1.45;padding:10px 14px;border-radius:6px}"
    ".answer{background:#e8f0fe;border-left:4px solid #4c8bf5}.error{background:#fce8e6;border-left:4px solid #d93025}"
    ".tl{font-size:11px}.tl summary{display:flex;align-items:center;cursor:pointer;list-style:none}"
    ".tl summary::-webkit-details-marker{display:none}"
    f".lbl{{flex:none;width:{_LABEL_W}px;padding-right:6px;box-sizing:border-box;text-align:right;overflow:hidden;"
    "text-overflow:ellipsis;white-space:nowrap;color:#333}"
    "details>summary>.lbl::before{content:'\\25B8  ';color:#9aa0a6}"
    "details[open]>summary>.lbl::before{content:'\\25BE  '}"
    ".track{position:relative;flex:1;height:18px}.track i{position:absolute;top:3px;height:12px;border-radius:2px;"
    "min-width:2px;box-sizing:border-box}.track i.q{top:8px;height:3px;background:#dadce0}"
    ".axis .track b{position:absolute;top:2px;font-weight:normal;color:#5f6368;transform:translateX(-50%)}"
    ".axis{display:flex;border-bottom:1px solid #eee}.lane>summary{border-top:1px solid #f1f3f4}"
    ".lane .step>summary .lbl{color:#5f6368;font-size:10.5px}.tl>.step>summary{border-top:1px solid #f1f3f4}"
    f".out{{margin:2px 0 8px {_LABEL_W}px;padding:6px 8px;background:#f8f9fa;border-radius:4px;"
    "white-space:pre-wrap;font-size:12px;max-height:24em;overflow:auto}p.out{color:#5f6368}"
    + "".join(f"i.{k}{{background:{c}}}" for k, c in _COLORS.items())
    + f"i.other{{background:#9aa0a6}}i.crit{{border:2px solid {_CRITICAL}}}"
)


def _ms(value: float | None) -> str:
    if value is None:
        return "\u2013"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _tokens(prompt: int, completion: int) -> str:
    return f"{prompt:,} prompt + {completion:,} completion"


def _calls(n: int) -> str:
    return f"{n} call" + ("" if n == 1 else "s")


def token_rows(a: RunAnalysis) -> list[tuple[str, str]]:
    """What the run's tokens were spent on, and how that squares with the run summary's figure."""
    totals = a.token_totals
    rows = []
    if totals:
        prompt, completion = sum(t.prompt_tokens for t in totals), sum(t.completion_tokens for t in totals)
        calls, cost = sum(t.calls_count for t in totals), sum(t.cost_usd for t in totals)
        rows.append(("tokens, all inference calls", f"{_tokens(prompt, completion)} in {_calls(calls)}, ${cost:.4f} "
                     "(every call the gateway served for this run)"))  # fmt: skip
        rows.append(("tokens by phase", " \u00b7 ".join(
            f"{t.phase} {t.prompt_tokens:,} + {t.completion_tokens:,} ({_calls(t.calls_count)}"
            + (f", {t.failed_count} failed" if t.failed_count else "") + ")" for t in totals
        )))  # fmt: skip
    if a.summary_tokens is not None:
        text = f"{_tokens(*a.summary_tokens)}: step results and synthesis, not planning (what `swarm submit --follow` shows)"
        by_phase = {t.phase: t for t in totals}
        counted = [by_phase[p] for p in ("steps", "synthesis") if p in by_phase]
        if counted:
            gap = (a.summary_tokens[0] - sum(t.prompt_tokens for t in counted),
                   a.summary_tokens[1] - sum(t.completion_tokens for t in counted))  # fmt: skip
            if gap != (0, 0):
                text += (f"; {gap[0]:+,} + {gap[1]:+,} against the steps' and synthesis' calls above (attempts whose "
                         "result the dispatcher did not count, or calls not recorded yet)")  # fmt: skip
        rows.append(("tokens, run summary", text))
    return rows


def summary_rows(a: RunAnalysis) -> list[tuple[str, str]]:
    """The headline figures, as (label, value)."""
    run = a.run
    succeeded = sum(1 for s in a.steps if s.outcome == "succeeded")
    retried = sum(max(0, s.attempts_count - 1) for s in a.steps)
    ratio = f" ({a.makespan_ms / a.lower_bound_ms:.2f}x the lower bound)" if a.lower_bound_ms else ""
    busy = a.queued_ms_total + a.running_ms_total
    rows = [
        ("status", str(run.get("status", "unknown"))),
        ("goal", str(run.get("goal", ""))[:120]),  # escaped by each renderer
        ("steps", f"{succeeded} succeeded of {len(a.steps)}; {retried} retries"),
        ("makespan", _ms(a.makespan_ms) + ratio),
        ("critical path", f"{len(a.critical_path)} steps, {_ms(a.critical_path_ms)}"),
        ("lower bound", f"{_ms(a.lower_bound_ms)} (longest dependency chain by running time)"),
        ("peak concurrency", f"{a.peak_concurrency} steps"),
        ("queued vs running", f"{_ms(a.queued_ms_total)} queued, {_ms(a.running_ms_total)} running"
         + (f" ({a.queued_ms_total / busy:.0%} queued)" if busy else "")),
    ]  # fmt: skip
    rows += token_rows(a)
    rows.append(("stragglers", ", ".join(s["step_id"] for s in a.stragglers[:8]) or "none"))
    return rows


def _headline(a: RunAnalysis) -> tuple[str, str] | None:
    """("answer" or "error", text) for the top of the report, or None when there is neither."""
    if a.answer is not None:
        return "answer", a.answer
    if a.run.get("error"):
        return "error", f"{a.run.get('status', 'failed')}: {a.run['error']}"
    return None


def render_terminal(a: RunAnalysis, answer_chars: int = TERMINAL_ANSWER_CHARS, token_rows_max: int = 20) -> Group:
    """The report for the terminal: the answer, summary, critical path, failures, tokens."""
    parts: list[Any] = []
    headline = _headline(a)
    if headline is not None:
        kind, text = headline
        if len(text) > answer_chars:
            text = text[:answer_chars] + f"\n… ({len(text) - answer_chars} more characters: see the HTML report)"
        style = "green" if kind == "answer" else "red"
        parts.append(Panel(escape(text), title=kind.capitalize(), title_align="left", border_style=style))
    summary = Table(title=f"Run {a.run_id}", show_header=False)
    for label, value in summary_rows(a):
        summary.add_row(label, escape(value))
    by_id = {s.step_id: s for s in a.steps}
    path = Table("critical path", "agent", "queued", "ran", title="Critical path")
    for step_id in a.critical_path:
        s = by_id[step_id]
        path.add_row(step_id, s.agent_id, _ms(s.queued_ms), _ms(s.run_ms))
    parts += [summary, path]
    if a.missing_agents:
        missing = Table(title=f"Missing sub-agents ({len(a.missing_agents)}): their final turn did not succeed")
        for name in ("agent", "role", "final turn"):
            missing.add_column(name, no_wrap=True)
        missing.add_column("last error", overflow="fold")
        for m in a.missing_agents[:MISSING_AGENTS_SHOWN]:
            missing.add_row(escape(m["agent_id"]), escape(m["role"]), escape(m["step_id"]), escape(m["error"][:160]))
        if len(a.missing_agents) > MISSING_AGENTS_SHOWN:
            missing.add_row(f"… {len(a.missing_agents) - MISSING_AGENTS_SHOWN} more", "", "", "(see --json)")
        parts.append(missing)
    if a.failures:
        failures = Table(title="Failures and retries")
        for name in ("kind", "steps", "events"):
            failures.add_column(name, no_wrap=True)
        failures.add_column("reason", overflow="fold")
        for f in a.failures:
            failures.add_row(f["kind"], str(f["steps_count"]), str(f["events_count"]), escape(f["reason"][:160]))
        parts.append(failures)
    if a.tokens:
        tokens = Table(title="Tokens by phase, agent and model (every inference call)")
        for name in ("phase", "agent", "model", "calls", "prompt", "completion", "cost $"):
            tokens.add_column(name, overflow="fold")  # ids and model names whole, on narrow terminals too
        for t in a.tokens[:token_rows_max]:
            tokens.add_row(t["phase"], escape(t["agent_id"] or "(unknown)"), t["model"], str(t["calls_count"]),
                           str(t["prompt_tokens"]), str(t["completion_tokens"]), f"{float(t['cost_usd']):.4f}")  # fmt: skip
        rest = a.tokens[token_rows_max:]
        if rest:
            tokens.add_row("", f"… {len(rest)} more", "", str(sum(int(t["calls_count"]) for t in rest)),
                           str(sum(int(t["prompt_tokens"]) for t in rest)),
                           str(sum(int(t["completion_tokens"]) for t in rest)),
                           f"{sum(float(t['cost_usd']) for t in rest):.4f}")  # fmt: skip
        parts.append(tokens)
    if a.outputs:
        parts.append(f"{len(a.outputs)} step outputs: in the HTML report (--html), next to each step's bar.")
    parts.extend(f"[yellow]note:[/] {escape(n)}" for n in a.notes)
    return Group(*parts)


# --------------------------------------------------------------------------- SVG charts


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(top: float, n: int = 5) -> list[float]:
    if top <= 0:
        return [0.0]
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(top / step) + 1)]


def _pct(value: float) -> str:
    return f"{max(0.0, min(100.0, value)):.3f}%"


def _natural(text: str) -> tuple[tuple[int, str], ...]:
    """A sort key that puts agent-2 before agent-10."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", text))


def _bars(s: StepSpan, t0: float, total: float, critical: bool) -> str:
    """A step's queued stretch and running bar, positioned in percent of the run."""
    if s.started_at is None or s.finished_at is None:
        return ""
    out = []
    if s.queued_at is not None and s.started_at > s.queued_at:
        left = (s.queued_at - t0) / total * 100
        out.append(f'<i class=q style="left:{_pct(left)};width:{_pct((s.started_at - s.queued_at) / total * 100)}"></i>')
    left = (s.started_at - t0) / total * 100
    width = (s.finished_at - s.started_at) / total * 100
    title = f"{s.step_id} ({s.agent_id}): {s.outcome or 'unfinished'}, ran {_ms(s.run_ms)}, queued {_ms(s.queued_ms)}"
    title += f", attempts {s.attempts_count}" + (" \u2014 on the critical path" if critical else "")
    outcome = s.outcome if s.outcome in _COLORS else "other"
    crit = " crit" if critical else ""
    out.append(f'<i class="b {outcome}{crit}" style="left:{_pct(left)};width:{_pct(width)}" title="{_esc(title)}"></i>')
    return "".join(out)


def timeline_html(
    steps: Sequence[StepSpan], critical: Sequence[str], outputs: Mapping[str, str], open_lanes: bool, open_steps: bool
) -> str:
    """Agent timeline: a lane per agent with a bar per step (its last attempt), critical path outlined.

    Each lane opens onto one row per step: its bar again, and its output, collapsible, right under it
    (an agent with one step gets just that row).
    HTML and CSS only (details/summary), so it needs no script and stays usable at 4,000 steps.
    """
    if not steps:
        return "<p>No step ran.</p>"
    timed = [s for s in steps if s.started_at is not None and s.finished_at is not None]
    t0 = min((min(s.queued_at or s.started_at or 0, s.started_at or 0) for s in timed), default=0.0)
    t1 = max((s.finished_at or 0 for s in timed), default=t0)
    total = max(t1 - t0, 1e-6)
    crit = set(critical)
    lanes: dict[str, list[StepSpan]] = defaultdict(list)
    for s in sorted(steps, key=lambda s: (s.started_at is None, s.started_at or 0, s.step_id)):
        lanes[s.agent_id].append(s)
    ticks = "".join(f'<b style="left:{_pct(t / 1000 / total * 100)}">{_ms(t)}</b>' for t in _nice_ticks(total * 1000))
    out = [f'<div class=tl><div class=axis><span class=lbl></span><span class=track>{ticks}</span></div>']
    lane_open = " open" if open_lanes else ""
    step_open = " open" if open_steps else ""

    def step_row(s: StepSpan, label: str) -> str:
        output = outputs.get(s.step_id)
        body = f"<pre class=out>{_esc(output)}</pre>" if output is not None else "<p class=out>no output recorded</p>"
        return (f'<details class="step"{step_open} id="step-{_esc(s.step_id)}"><summary>'
                f'<span class=lbl title="{_esc(label)}">{_esc(label)}</span><span class=track>'
                f"{_bars(s, t0, total, s.step_id in crit)}</span></summary>{body}</details>")  # fmt: skip

    for agent, lane in sorted(lanes.items(), key=lambda kv: _natural(kv[0])):
        name = agent or "(no agent)"
        if len(lane) == 1:  # a lane of one step is that step's row
            out.append(step_row(lane[0], f"{name} \u00b7 {lane[0].step_id}"))
            continue
        bars = "".join(_bars(s, t0, total, s.step_id in crit) for s in lane)
        out.append(f'<details class=lane{lane_open}><summary><span class=lbl title="{_esc(name)} ({len(lane)} steps)">'
                   f"{_esc(name)}</span><span class=track>{bars}</span></summary>")  # fmt: skip
        out.extend(step_row(s, s.step_id) for s in lane)
        out.append("</details>")
    out.append("</div>")
    return "".join(out)


def line_svg(points: Sequence[tuple[float, float]], x_label: str, y_label: str, width: int = 980, height: int = 200) -> str:
    """A step line with area, for concurrency over time."""
    if not points:
        return "<p>No data.</p>"
    left, bottom, top = 50, 30, 10
    plot_w, plot_h = width - left - 20, height - top - bottom
    xmax = max(p[0] for p in points) or 1.0
    ymax = max(max(p[1] for p in points), 1)
    ticks = _nice_ticks(ymax, 4)
    ymax = max(ymax, ticks[-1])

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x / xmax * plot_w, top + plot_h - y / ymax * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="{_FONT};font-size:11px">']
    for t in ticks:
        _, y = xy(0, t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{t:g}</text>')
    path = []
    for i, (x, y) in enumerate(points):
        px, py = xy(x, y)
        if i:
            path.append(f"H{px:.1f}")
        path.append(f"V{py:.1f}" if i else f"M{px:.1f} {py:.1f}")
    x0, y0 = xy(0, 0)
    d = "".join(path)
    out.append(f'<path d="{d}V{y0:.1f}H{x0:.1f}Z" fill="#4c8bf5" fill-opacity="0.18" stroke="none"/>')
    out.append(f'<path d="{d}" fill="none" stroke="#4c8bf5" stroke-width="1.5"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" fill="#555">{_esc(x_label)}'
               f" (0 \u2013 {xmax:.2f} s)</text>")  # fmt: skip
    out.append(f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
               f'text-anchor="middle" fill="#555">{_esc(y_label)}</text></svg>')  # fmt: skip
    return "".join(out)


def bars_svg(items: Sequence[tuple[str, float, str]], unit: str, width: int = 980) -> str:
    """Horizontal bars: (label, value, color)."""
    if not items:
        return "<p>No data.</p>"
    left, bar_h = 170, 20
    height = bar_h * len(items) + 10
    vmax = max(v for _, v, _ in items) or 1.0
    plot_w = width - left - 120
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="{_FONT};font-size:11px">']
    for i, (label, value, color) in enumerate(items):
        y = 5 + i * bar_h
        w = max(value / vmax * plot_w, 1)
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" fill="#333">{_esc(label[:26])}</text>')
        out.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 5}" rx="2" fill="{color}"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}" fill="#333">{value:,.0f} {_esc(unit)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram_svg(values_ms: Sequence[float], width: int = 980, height: int = 200, bins: int = 24) -> str:
    """Step latency histogram (running time of succeeded steps)."""
    if not values_ms:
        return "<p>No data.</p>"
    lo, hi = 0.0, max(values_ms) * 1.0001 or 1.0
    size = (hi - lo) / bins
    counts = [0] * bins
    for v in values_ms:
        counts[min(bins - 1, int((v - lo) / size))] += 1
    left, bottom, top = 50, 30, 10
    plot_w, plot_h = width - left - 20, height - top - bottom
    cmax = max(counts)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="{_FONT};font-size:11px">']
    for t in _nice_ticks(cmax, 4):
        y = top + plot_h - t / max(cmax, 1) * plot_h
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{t:g}</text>')
    bw = plot_w / bins
    for i, c in enumerate(counts):
        h = c / max(cmax, 1) * plot_h
        x = left + i * bw
        title = f"{_ms(lo + i * size)} \u2013 {_ms(lo + (i + 1) * size)}: {c} steps"
        out.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                   f'fill="#34a853"><title>{_esc(title)}</title></rect>')  # fmt: skip
    for i in range(0, bins + 1, max(1, bins // 6)):
        x = left + i * bw
        out.append(f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle" fill="#555">{_ms(lo + i * size)}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- the page


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(a: RunAnalysis, generated_at: datetime | None = None) -> str:
    """The self-contained HTML report of one run."""
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    by_id = {s.step_id: s for s in a.steps}
    summary = _table(("", ""), summary_rows(a))
    path_rows = [(i + 1, sid, by_id[sid].agent_id, _ms(by_id[sid].queued_ms), _ms(by_id[sid].run_ms))
                 for i, sid in enumerate(a.critical_path)]  # fmt: skip
    tokens_by_agent: dict[str, float] = defaultdict(float)
    for t in a.tokens:
        label = t["agent_id"] if t["phase"] == "steps" else f"{t['agent_id']} ({t['phase']})"
        tokens_by_agent[label or "(unknown)"] += int(t["prompt_tokens"]) + int(t["completion_tokens"])
    ranked = sorted(tokens_by_agent.items(), key=lambda kv: -kv[1])
    token_bars = [(agent, n, "#a142f4") for agent, n in ranked[:TOKEN_BARS_MAX]]
    if len(ranked) > TOKEN_BARS_MAX:
        token_bars.append((f"{len(ranked) - TOKEN_BARS_MAX} more", sum(n for _, n in ranked[TOKEN_BARS_MAX:]), "#c58af9"))
    latencies = [s.run_ms for s in a.steps if s.outcome == "succeeded" and s.run_ms > 0]
    legend = "".join(
        f'<span class="key"><i style="background:{c}"></i>{k.replace("_", " ")}</span>' for k, c in _COLORS.items()
    ) + f'<span class="key"><i style="background:#fff;border:2px solid {_CRITICAL}"></i>critical path</span>'
    legend += '<span class="key"><i style="background:#dadce0;height:4px"></i>queued</span>'
    timeline = timeline_html(a.steps, a.critical_path, a.outputs, open_lanes=len(a.steps) <= OPEN_LANES_MAX,
                             open_steps=len(a.steps) <= OPEN_STEPS_MAX)  # fmt: skip
    sections = [f"<h1>Run <code>{_esc(a.run_id)}</code></h1><p class=sub>Swarm run report · generated {generated}</p>"]
    headline = _headline(a)
    if headline is not None:
        kind, text = headline
        sections.append(f'<section id={kind}><h2>{kind.capitalize()}</h2><div class="{kind}">{_esc(text)}</div></section>')
    sections += [
        f"<section><h2>Summary</h2>{summary}</section>",
        f"<section><h2>Agent timeline</h2><p class=sub>One lane per agent, one bar per step (its last attempt); "
        f"hover a bar for details, click a lane for its steps and a step for its output.</p>"
        f"<div class=legend>{legend}</div>{timeline}</section>",
        f"<section><h2>Concurrency over time</h2>{line_svg(a.concurrency, 'time since the first step started', 'steps running')}</section>",
        *([f"<section><h2>The DAG growing</h2><p class=sub>Steps in the run over time: the plan's, then each dynamic "
           f"spawn's.</p>{line_svg(a.growth, 'time since the first step started', 'steps in the run')}</section>"]
          if a.growth else []),
        f"<section><h2>Critical path</h2><p class=sub>The chain of steps that set the makespan: from the last step "
        f"to finish, back through the dependency each one waited for. {_ms(a.critical_path_ms)} of "
        f"{_ms(a.makespan_ms)}.</p>{_table(('#', 'step', 'agent', 'queued', 'ran'), path_rows)}</section>",
        f"<section><h2>Step latency</h2><p class=sub>Running time of succeeded steps.</p>{histogram_svg(latencies)}</section>",
        f"<section><h2>Tokens by agent</h2><p class=sub>Every inference call of the run; planning and synthesis "
        f"under the service that made them.</p>{bars_svg(token_bars, 'tokens')}</section>",
    ]
    if a.stragglers:
        slow = [(s["step_id"], s["agent_id"], _ms(s["run_ms"]), f"{s['x_median']:.1f}x") for s in a.stragglers]
        sections.append(f"<section><h2>Stragglers</h2>{_table(('step', 'agent', 'ran', 'vs median'), slow)}</section>")
    if a.missing_agents:
        lacking = [(m["agent_id"], m["role"], m["step_id"], m["error"]) for m in a.missing_agents]
        sections.append(
            f"<section><h2>Missing sub-agents</h2><p class=sub>{len(lacking)} agents whose final turn did not "
            f"succeed: the answer was made without them.</p>"
            f"{_table(('agent', 'role', 'final turn', 'last error'), lacking)}</section>"
        )
    if a.failures:
        failed = [(f["kind"], f["steps_count"], f["events_count"], f["reason"]) for f in a.failures]
        sections.append(f"<section><h2>Failures and retries</h2>{_table(('kind', 'steps', 'events', 'reason'), failed)}</section>")
    if a.tokens:
        spent = [(t["phase"], t["agent_id"], t["model"], t["calls_count"], t["prompt_tokens"], t["completion_tokens"],
                  f"{float(t['cost_usd']):.4f}") for t in a.tokens]  # fmt: skip
        headers = ("phase", "agent", "model", "calls", "prompt", "completion", "cost $")
        sections.append(f"<section><h2>Tokens and cost by phase, agent and model</h2>{_table(headers, spent)}</section>")
    sections.extend(f"<p class=note>note: {_esc(n)}</p>" for n in a.notes)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Swarm run {_esc(a.run_id)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>\n")  # fmt: skip
