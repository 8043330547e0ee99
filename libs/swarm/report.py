"""The run report: a terminal summary (rich) and a self-contained HTML page with inline SVG charts.

Self-contained means no network: no CDN, no fonts, no scripts; the charts are SVG drawn here, so the
file can be mailed, archived, or opened on an air-gapped machine.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from swarm.analytics import RunAnalysis, StepSpan

_COLORS = {"succeeded": "#4c8bf5", "failed": "#e8710a", "dead_lettered": "#d93025", "cancelled": "#9aa0a6"}
_CRITICAL = "#c5221f"
_FONT = "font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"


def _ms(value: float | None) -> str:
    if value is None:
        return "\u2013"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def summary_rows(a: RunAnalysis) -> list[tuple[str, str]]:
    """The headline figures, as (label, value)."""
    run = a.run
    succeeded = sum(1 for s in a.steps if s.outcome == "succeeded")
    retried = sum(max(0, s.attempts_count - 1) for s in a.steps)
    ratio = f" ({a.makespan_ms / a.lower_bound_ms:.2f}x the lower bound)" if a.lower_bound_ms else ""
    tokens_in = sum(int(t["prompt_tokens"]) for t in a.tokens)
    tokens_out = sum(int(t["completion_tokens"]) for t in a.tokens)
    cost = sum(float(t["cost_usd"]) for t in a.tokens)
    busy = a.queued_ms_total + a.running_ms_total
    return [
        ("status", str(run.get("status", "unknown"))),
        ("goal", str(run.get("goal", ""))[:120]),  # escaped by each renderer
        ("steps", f"{succeeded} succeeded of {len(a.steps)}; {retried} retries"),
        ("makespan", _ms(a.makespan_ms) + ratio),
        ("critical path", f"{len(a.critical_path)} steps, {_ms(a.critical_path_ms)}"),
        ("lower bound", f"{_ms(a.lower_bound_ms)} (longest dependency chain by running time)"),
        ("peak concurrency", f"{a.peak_concurrency} steps"),
        ("queued vs running", f"{_ms(a.queued_ms_total)} queued, {_ms(a.running_ms_total)} running"
         + (f" ({a.queued_ms_total / busy:.0%} queued)" if busy else "")),
        ("tokens", f"{tokens_in} prompt + {tokens_out} completion, ${cost:.4f}"),
        ("stragglers", ", ".join(s["step_id"] for s in a.stragglers[:8]) or "none"),
    ]  # fmt: skip


def render_terminal(a: RunAnalysis) -> Group:
    """The report for the terminal: summary, critical path, failures, tokens."""
    summary = Table(title=f"Run {a.run_id}", show_header=False)
    for label, value in summary_rows(a):
        summary.add_row(label, escape(value))
    by_id = {s.step_id: s for s in a.steps}
    path = Table("critical path", "agent", "queued", "ran", title="Critical path")
    for step_id in a.critical_path:
        s = by_id[step_id]
        path.add_row(step_id, s.agent_id, _ms(s.queued_ms), _ms(s.run_ms))
    parts: list[Any] = [summary, path]
    if a.failures:
        failures = Table(title="Failures and retries")
        for name in ("kind", "steps", "events"):
            failures.add_column(name, no_wrap=True)
        failures.add_column("reason", overflow="fold")
        for f in a.failures:
            failures.add_row(f["kind"], str(f["steps_count"]), str(f["events_count"]), escape(f["reason"][:160]))
        parts.append(failures)
    if a.tokens:
        tokens = Table("agent", "model", "calls", "prompt", "completion", "cost $", title="Tokens by agent and model")
        for t in a.tokens:
            tokens.add_row(t["agent_id"] or "(none)", t["model"], str(t["calls_count"]), str(t["prompt_tokens"]),
                           str(t["completion_tokens"]), f"{float(t['cost_usd']):.4f}")  # fmt: skip
        parts.append(tokens)
    parts.extend(f"[yellow]note:[/] {n}" for n in a.notes)
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


def gantt_svg(steps: Sequence[StepSpan], critical: Sequence[str], width: int = 980) -> str:
    """Agent timeline: one lane per agent, a bar per step attempt span; critical path outlined in red."""
    spans = [s for s in steps if s.started_at is not None and s.finished_at is not None]
    if not spans:
        return "<p>No step ran.</p>"
    t0 = min(min(s.queued_at or s.started_at or 0, s.started_at or 0) for s in spans)
    t1 = max(s.finished_at or 0 for s in spans)
    total = max(t1 - t0, 1e-6)
    lanes: dict[str, list[StepSpan]] = defaultdict(list)
    for s in sorted(spans, key=lambda s: s.started_at or 0):
        lanes[s.agent_id].append(s)
    left, lane_h, top = 130, 22, 24
    height = top + lane_h * len(lanes) + 30
    plot_w = width - left - 20
    crit = set(critical)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="{_FONT};font-size:11px">']
    for tick in _nice_ticks(total * 1000):
        x = left + tick / 1000 / total * plot_w
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 26}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle" fill="#555">{_ms(tick)}</text>')
    for i, (agent, lane) in enumerate(sorted(lanes.items())):
        y = top + i * lane_h
        out.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" fill="#333">{_esc(agent[:18])}</text>')
        for s in lane:
            if s.queued_at is not None and s.started_at is not None and s.started_at > s.queued_at:
                qx = left + (s.queued_at - t0) / total * plot_w
                qw = (s.started_at - s.queued_at) / total * plot_w
                out.append(f'<rect x="{qx:.1f}" y="{y + 9}" width="{max(qw, 0.5):.1f}" height="4" fill="#dadce0"/>')
            x = left + ((s.started_at or t0) - t0) / total * plot_w
            w = max(((s.finished_at or 0) - (s.started_at or 0)) / total * plot_w, 1.5)
            color = _COLORS.get(s.outcome, "#9aa0a6")
            stroke = f' stroke="{_CRITICAL}" stroke-width="2.5"' if s.step_id in crit else ""
            title = f"{s.step_id} ({s.agent_id}): {s.outcome}, ran {_ms(s.run_ms)}, queued {_ms(s.queued_ms)}"
            title += ", attempts " + str(s.attempts_count) + (" — on the critical path" if s.step_id in crit else "")
            out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{lane_h - 6}" rx="2" fill="{color}"'
                       f'{stroke}><title>{_esc(title)}</title></rect>')  # fmt: skip
    out.append("</svg>")
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
        tokens_by_agent[t["agent_id"] or "(no step)"] += int(t["prompt_tokens"]) + int(t["completion_tokens"])
    token_bars = [(agent, n, "#a142f4") for agent, n in sorted(tokens_by_agent.items(), key=lambda kv: -kv[1])]
    latencies = [s.run_ms for s in a.steps if s.outcome == "succeeded" and s.run_ms > 0]
    legend = "".join(
        f'<span class="key"><i style="background:{c}"></i>{k.replace("_", " ")}</span>' for k, c in _COLORS.items()
    ) + f'<span class="key"><i style="background:#fff;border:2px solid {_CRITICAL}"></i>critical path</span>'
    legend += '<span class="key"><i style="background:#dadce0;height:4px"></i>queued</span>'
    sections = [
        f"<h1>Run <code>{_esc(a.run_id)}</code></h1><p class=sub>Swarm run report · generated {generated}</p>",
        f"<section><h2>Summary</h2>{summary}</section>",
        f"<section><h2>Agent timeline</h2><p class=sub>One lane per agent, one bar per step (its last attempt); "
        f"hover a bar for details.</p><div class=legend>{legend}</div>{gantt_svg(a.steps, a.critical_path)}</section>",
        f"<section><h2>Concurrency over time</h2>{line_svg(a.concurrency, 'time since the first step started', 'steps running')}</section>",
        f"<section><h2>Critical path</h2><p class=sub>The chain of steps that set the makespan: from the last step "
        f"to finish, back through the dependency each one waited for. {_ms(a.critical_path_ms)} of "
        f"{_ms(a.makespan_ms)}.</p>{_table(('#', 'step', 'agent', 'queued', 'ran'), path_rows)}</section>",
        f"<section><h2>Step latency</h2><p class=sub>Running time of succeeded steps.</p>{histogram_svg(latencies)}</section>",
        f"<section><h2>Tokens by agent</h2>{bars_svg(token_bars, 'tokens')}</section>",
    ]
    if a.stragglers:
        rows = [(s["step_id"], s["agent_id"], _ms(s["run_ms"]), f"{s['x_median']:.1f}x") for s in a.stragglers]
        sections.append(f"<section><h2>Stragglers</h2>{_table(('step', 'agent', 'ran', 'vs median'), rows)}</section>")
    if a.failures:
        rows = [(f["kind"], f["steps_count"], f["events_count"], f["reason"]) for f in a.failures]
        sections.append(f"<section><h2>Failures and retries</h2>{_table(('kind', 'steps', 'events', 'reason'), rows)}</section>")
    if a.tokens:
        rows = [(t["agent_id"], t["model"], t["calls_count"], t["prompt_tokens"], t["completion_tokens"],
                 f"{float(t['cost_usd']):.4f}") for t in a.tokens]  # fmt: skip
        sections.append(f"<section><h2>Tokens and cost by agent and model</h2>"
                        f"{_table(('agent', 'model', 'calls', 'prompt', 'completion', 'cost $'), rows)}</section>")  # fmt: skip
    sections.extend(f"<p class=note>note: {_esc(n)}</p>" for n in a.notes)
    style = (
        f"body{{{_FONT};margin:24px auto;max-width:1020px;color:#202124}}h1{{font-size:22px;margin:0}}"
        "h2{font-size:16px;margin:22px 0 6px}.sub{color:#5f6368;margin:2px 0 8px;font-size:13px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #eee;padding:3px 10px 3px 0;"
        "text-align:left}th{color:#5f6368;font-weight:600}.legend{font-size:12px;margin:4px 0}"
        ".key{margin-right:14px}.key i{display:inline-block;width:12px;height:10px;margin-right:4px;"
        "vertical-align:middle}.note{color:#b06000}section{margin-bottom:10px}"
    )
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Swarm run {_esc(a.run_id)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")  # fmt: skip
