"""The `swarm` command: the local stack, tasks, runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from swarm.client import MessageTooLarge, StackNotRunning, SwarmClient
from swarm.contracts import (
    DEFAULT_TENANT,
    TERMINAL_RUN_EVENTS,
    Plan,
    PlanPattern,
    RunCompleted,
    RunEvent,
    RunEventKind,
    RunPolicy,
    RunRecord,
    RunSummary,
)
from swarm.ops.runview import RunView
from swarm.ops.stack import NO_STACK, Stack, StackAlreadyRunning, StackError
from swarm.settings import NatsSettings, StackSettings

app = typer.Typer(help="Swarm: massive multi-agent runs over NATS JetStream.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """Swarm: massive multi-agent runs over NATS JetStream."""
    # Warnings of the SDK (a skipped message on a followed run) go to stderr, beside the command's output.
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line reason to stderr and return the exit to raise."""
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def nats_settings(url: str | None) -> NatsSettings:
    """The NATS settings: an explicit URL, else the running local stack's, else the environment's."""
    if url:
        return NatsSettings(url=url)
    state = Stack().state()
    if state is not None:
        return NatsSettings(url=str(state["nats_url"]))
    return NatsSettings()


@asynccontextmanager
async def connected(settings: NatsSettings | str | None) -> AsyncIterator[SwarmClient]:
    """A client of the deployment (a URL, settings, or the local stack's); a clear exit when none answers."""
    if not isinstance(settings, NatsSettings):
        settings = nats_settings(settings)
    try:
        client = await SwarmClient.connect(settings)
    except StackNotRunning as exc:
        raise fail(str(exc)) from exc
    async with client:
        yield client


UrlOption = Annotated[str | None, typer.Option("--nats-url", help="NATS URL (default: the local stack's).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


@app.command()
def up(
    backend: Annotated[str | None, typer.Option(help="Inference backend: llamacpp or sim.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker-pool processes.")] = None,
    nats_cluster: Annotated[
        int | None, typer.Option("--nats-cluster", help="NATS nodes: 3 runs a JetStream cluster on loopback (R3 streams).")
    ] = None,
) -> None:
    """Start the local stack: nats-server (or a cluster of them) and every service, each its own process."""
    overrides = {
        k: v for k, v in {"gateway_backend": backend, "workers": workers, "nats_cluster": nats_cluster}.items() if v is not None
    }
    stack = Stack(StackSettings(**overrides))
    try:
        with console.status("starting") as status:
            try:
                stack.up(on_step=lambda name: status.update(f"starting {name}"))
            except StackAlreadyRunning:
                restarted = stack.revive(on_step=lambda name: status.update(f"restarting {name}"))
                if not restarted:
                    console.print("The stack is already running, every process alive; `swarm down` stops it.")
                    return
                console.print(f"[yellow]Restarted what had died: {', '.join(restarted)}[/]")
    except (StackError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(processes_table(stack, title=f"Swarm is up at {stack.state()['nats_url']}"))  # type: ignore[index]


def processes_table(stack: Stack, title: str) -> Table:
    """The stack's processes, alive or dead, for the terminal."""
    processes = stack.processes()
    cluster = any("meta_leader" in p for p in processes)
    table = Table("service", "pid", "state", *(["role"] if cluster else []), "log", title=title, box=box.SIMPLE_HEAD)
    table.columns[-1].overflow = "fold"
    for p in processes:
        state = "[green]alive[/]" if p["alive"] else "[red]dead[/]"
        if p["alive"] and p.get("healthy") is False:
            state = f"[yellow]unhealthy[/] {p.get('error', '')}"
        role = [node_role(p)] if cluster else []
        table.add_row(str(p["name"]), str(p["pid"]), state, *role, str(p["log"]))
    return table


def node_role(process: dict[str, object]) -> str:
    """A cluster node's role: meta leader, and the streams it leads."""
    if "meta_leader" not in process:
        return ""
    roles = ["meta leader"] if process["meta_leader"] else []
    leads = list(process.get("leads") or [])  # type: ignore[call-overload]
    if leads:
        roles.append("leads " + ", ".join(leads))
    return "; ".join(roles) or "follower"


@app.command()
def down() -> None:
    """Stop the local stack: services drain, then nats-server stops."""
    with console.status("stopping"):
        stopped = Stack().down()
    console.print("Swarm is down." if stopped else "No local stack is running.")


@app.command()
def submit(
    goal: Annotated[str | None, typer.Argument(help="What the swarm must achieve.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the goal from a file.")] = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="An explicit plan (JSON: agents and steps).")] = None,
    pattern: Annotated[PlanPattern | None, typer.Option(help="Use this pattern template.")] = None,
    agents: Annotated[int | None, typer.Option(help="Preferred number of sub-agents.")] = None,
    policy: Annotated[RunPolicy, typer.Option(help="Failure policy.")] = RunPolicy.FAIL_FAST,
    tenant: Annotated[str, typer.Option(help="Tenant.")] = DEFAULT_TENANT,
    priority: Annotated[
        int, typer.Option(min=-10, max=10, help="Scheduling priority: a higher one is dispatched first (-10..10).")
    ] = 0,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Show progress and the answer.")] = False,
    nats_url: UrlOption = None,
) -> None:
    """Submit a task; with --follow, show its progress, then the answer and a run summary.

    A plan of any size may be given: one too large for a message is sent by reference (the plans store).
    """
    try:
        if file is not None:
            goal = file.read_text()
        plan = Plan.model_validate_json(plan_file.read_text()) if plan_file else None
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}", 2) from exc
    except ValidationError as exc:
        raise fail(f"invalid plan in {plan_file}: {exc.errors()[0]['msg']}", 2) from exc
    if plan is None and (goal is None or not goal.strip()):
        raise fail("the task is empty: give a goal, --file or --plan", 2)
    asyncio.run(_submit(goal, plan, pattern, agents, policy, tenant, priority, follow, nats_settings(nats_url)))


async def _submit(
    goal: str | None, plan: Plan | None, pattern: PlanPattern | None, agents: int | None,
    policy: RunPolicy, tenant: str, priority: int, follow: bool, settings: NatsSettings,
) -> None:  # fmt: skip
    async with connected(settings) as client:
        try:
            run_id = await client.submit(
                goal, plan=plan, pattern=pattern, n_agents=agents, policy=policy, tenant=tenant, priority=priority
            )
        except StackNotRunning as exc:
            raise fail(str(exc)) from exc
        except MessageTooLarge as exc:
            raise fail(str(exc), 2) from exc
        console.print(f"Submitted run [bold]{run_id}[/]")
        if follow:
            await _follow(client, run_id, tenant)


FOLLOW_AGENT_LINES = 10  # agents shown above the bar; the rest are counted


class _FollowDisplay:
    """What `--follow` shows while the run goes: the busiest agents, a count of the rest, the overall bar."""

    def __init__(self, view: RunView, progress: Progress) -> None:
        self.view, self.progress = view, progress

    def __rich__(self) -> Group:
        if not self.view.steps:
            return Group(self.progress)
        limit = max(1, min(FOLLOW_AGENT_LINES, console.height - 4))
        return Group(self.view.agents_table(limit, width=console.width), self.progress)


async def _follow(client: SwarmClient, run_id: str, tenant: str) -> None:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=console)
    bar = progress.add_task("planning", total=None)
    view = RunView(run_id)
    final: RunEvent | None = None
    with Live(_FollowDisplay(view, progress), console=console, refresh_per_second=4, transient=True) as live:
        async for event in client.events(run_id, tenant):
            view.apply(event)
            if event.kind == RunEventKind.PLANNED:
                how = f", asked as {event.llm_schema}" if event.llm_schema else ""
                note = f" ({event.note})" if event.note else ""
                n_agents = len(event.plan.agents) if event.plan else event.agents_count
                n_steps = len(event.plan.steps) if event.plan else event.steps_count
                live.console.print(f"Planned: {n_agents} agents, {n_steps} steps, from {event.source.value}{how}{note}")
                progress.update(bar, description="running steps", total=n_steps, completed=0)
            elif event.kind in (RunEventKind.PROGRESS, RunEventKind.EXECUTED):
                progress.update(bar, total=view.steps_total, completed=view.steps_done)
                if event.kind == RunEventKind.EXECUTED:
                    progress.update(bar, description="synthesizing")
            elif event.kind in TERMINAL_RUN_EVENTS:
                progress.update(bar, description=event.kind)
                final = event
    if isinstance(final, RunCompleted):
        console.print(Panel(Markdown(final.answer), title=f"Answer — run {run_id}", border_style="green"))
        console.print(summary_table(final.summary))
        return
    if view.steps_total:  # the live lines are gone: say how far the run got
        console.print(f"Steps: {view.steps_succeeded} succeeded, {view.steps_failed} failed of {view.steps_total}")
    reason = getattr(final, "error", None) or getattr(final, "reason", "")
    raise fail(f"run {run_id} {getattr(final, 'kind', 'ended')}: {reason}")


def summary_table(summary: RunSummary) -> Table:
    """A run summary for the terminal."""
    table = Table(title="Run summary", show_header=False)
    rows = {
        "agents": summary.agents_count,
        "steps": f"{summary.steps_succeeded} succeeded, {summary.steps_failed} failed of {summary.steps_total}",
        "retries": summary.retries_count,
        # What the run summary counts; `swarm report` also shows the planning call and the split by phase.
        "tokens (steps + synthesis)": f"{summary.prompt_tokens} prompt + {summary.completion_tokens} completion",
        "wall time": f"{summary.wall_ms / 1000:.1f} s",
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


@app.command()
def runs(limit: Annotated[int, typer.Option(help="How many.")] = 20, as_json: JsonOption = False, nats_url: UrlOption = None) -> None:
    """List recent runs and their status."""

    async def listing() -> None:
        async with connected(nats_url) as client:
            records = await client.runs(limit)
        if as_json:
            print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
            return
        console.print(runs_table(records) if records else "No runs yet: `swarm submit GOAL` starts one.")

    asyncio.run(listing())


RUNS_GOAL_MIN_WIDTH = 16  # below this the goal says nothing: the submission time gives way first


def runs_table(records: list[RunRecord], width: int | None = None) -> Table:
    """Runs for the terminal, one line each: ids, status and counts whole, the goal in the width left
    (cut with an ellipsis); in a narrow terminal the submission time gives way (generated ids start with it)."""
    width = width or console.width
    columns: dict[str, list[str]] = {
        "run": [r.run_id for r in records],
        "status": [r.status.value for r in records],
        "agents": [str(r.agents_count) for r in records],
        "steps": [str(r.steps_total) for r in records],
        "submitted": [f"{r.submitted_at:%m-%d %H:%M}" if r.submitted_at else "" for r in records],
    }
    widths = {name: max(len(name), *(len(v) for v in values)) for name, values in columns.items()}
    if sum(w + 2 for w in widths.values()) + RUNS_GOAL_MIN_WIDTH > width:
        del columns["submitted"]
    table = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, expand=True, width=width, header_style="bold underline")
    for name in columns:
        justify = "right" if name in ("agents", "steps") else "left"
        table.add_column(name, no_wrap=True, justify=justify, min_width=widths[name])  # type: ignore[arg-type]
    table.add_column("goal", no_wrap=True, overflow="ellipsis", ratio=1)
    for i, r in enumerate(records):
        table.add_row(*(values[i] for values in columns.values()), " ".join(r.goal.split()))
    return table


@app.command()
def cancel(run_id: str, tenant: str = DEFAULT_TENANT, nats_url: UrlOption = None) -> None:
    """Cancel a run: its queued steps are dropped."""

    async def cancelling() -> None:
        async with connected(nats_url) as client:
            latest = await client.latest_events(run_id, tenant)
            if latest is None:
                raise fail(f"no run {run_id} of tenant {tenant}: `swarm runs` lists the runs")
            over = [e.kind for e in latest if e.kind in TERMINAL_RUN_EVENTS]
            if over:
                raise fail(f"run {run_id} is already over ({over[0]}): nothing to cancel")
            await client.cancel(run_id, tenant)
        console.print(f"Cancellation of {run_id} requested.")

    asyncio.run(cancelling())


@app.command()
def top(
    tenant: Annotated[str | None, typer.Option(help="Show only this tenant's runs (what a tenant may read).")] = None,
    since_min: Annotated[float, typer.Option("--since", min=0, help="Show runs with events in the last N minutes.")] = 30,
    nats_url: UrlOption = None,
) -> None:
    """A live view of the stack: runs, the selected run's agents, workers, gateway, recorder, dead services."""
    from swarm.ops.top import run_top

    settings = nats_settings(nats_url)

    async def watching() -> None:
        async with connected(settings) as client:
            await run_top(client, settings.url, tenant, since_min * 60, console)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watching())


@app.command()
def loadtest(
    scenario: Annotated[str, typer.Option(help="Scenario: fanout-300, chain-200, swarm-300x4000, faults-5pct, ...")],
    latency_scale: Annotated[float, typer.Option(min=0, help="Multiplies the simulated step latencies (0: none).")] = 1.0,
    median_ms: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Run-engine scenarios: median of the log-normal step latency (default: the scenario's own, mostly 1000)."
        ),
    ] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the figures to this JSON file.")] = None,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", help="Target this deployment (default: the local stack, else an embedded one).")
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Repeat the scenario; the figures are medians.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the plans and their simulated latencies.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Embedded stack: worker-pool processes.")] = 2,
    worker_concurrency: Annotated[int, typer.Option(min=1, help="Embedded stack: steps run at once per worker.")] = 256,
    home: Annotated[Path, typer.Option(help="Embedded stack: its data and logs (emptied first).")] = Path(".swarm/loadtest"),
    scale_steps: Annotated[float, typer.Option(min=0.001, max=1.0, help="Shrink the scenario (smoke tests).")] = 1.0,
    timeout_s: Annotated[float, typer.Option(min=1, help="Give up on a run after this many seconds.")] = 600.0,
    floor: Annotated[bool, typer.Option("--floor/--no-floor", help="Measure the raw JetStream round trip.")] = True,
    instruction_chars: Annotated[
        int, typer.Option(min=0, max=8000, help="Characters of every agent's and step's instructions (0: one word).")
    ] = 300,
    targets: Annotated[
        bool, typer.Option("--targets/--no-targets", help="Exit 1 when a figure misses its target (else just report).")
    ] = True,
    target_efficiency: Annotated[float | None, typer.Option(help="Least critical path / makespan [0.95].")] = None,
    target_floor_ratio: Annotated[
        float | None, typer.Option(help="Least steps/s over the raw JetStream round trip [0.5].")
    ] = None,
    target_added_latency_ms: Annotated[float | None, typer.Option(help="Most gateway added latency, p50 [2].")] = None,
    target_events_per_s: Annotated[float | None, typer.Option(help="Least recorder ingest rate [20000].")] = None,
    target_small_makespan_ratio: Annotated[
        float | None, typer.Option(help="fair-share: most small-run makespan, next to the big run / alone [1.5].")
    ] = None,
    target_big_throughput_ratio: Annotated[
        float | None, typer.Option(help="fair-share: least big-run steps/s, next to the small run / alone [0.9].")
    ] = None,
    nats_cluster: Annotated[
        int, typer.Option("--nats-cluster", min=1, max=5, help="Embedded stack: NATS nodes (3: a cluster, R3 streams).")
    ] = 1,
) -> None:
    """Drive the real services (sim backend) with a scenario; a table of figures, and JSON with --json.

    Exits 1 when a step is lost, a run does not complete, or (unless --no-targets) a figure misses its target.
    """
    from loadtest.runner import (
        LoadtestError,
        LoadtestOptions,
        Targets,
        failed_targets,
        report_table,
        run_loadtest,
    )

    given = {
        "efficiency": target_efficiency, "floor_ratio": target_floor_ratio,
        "added_latency_p50_ms": target_added_latency_ms, "events_per_s": target_events_per_s,
        "small_makespan_ratio": target_small_makespan_ratio, "big_throughput_ratio": target_big_throughput_ratio,
    }  # fmt: skip
    goals = Targets(**{name: value for name, value in given.items() if value is not None})
    options = LoadtestOptions(
        scenario=scenario, latency_scale=latency_scale, runs=runs, seed=seed, nats_url=nats_url, home=home,
        workers=workers, worker_concurrency=worker_concurrency, scale_steps=scale_steps, run_timeout_s=timeout_s,
        floor=floor, instruction_chars=instruction_chars, targets=goals, nats_cluster=nats_cluster, median_ms=median_ms,
    )  # fmt: skip
    try:
        report = run_loadtest(options, console)
    except (LoadtestError, StackNotRunning, StackError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(report_table(report))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"Figures written to {json_file}")
    problems = failed_targets(report, goals if targets else None)
    if problems:
        raise fail("missed: " + "; ".join(problems))


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Show whether the local stack runs, and each process alive or dead; exit 1 when none runs or one died."""
    stack = Stack()
    state = stack.state()
    if state is None:
        if as_json:
            print(json.dumps({"running": False, "processes": []}))
        raise fail(NO_STACK)
    processes = stack.processes()
    dead = [str(p["name"]) for p in processes if not p["alive"]]
    if as_json:
        print(json.dumps({"running": True, "nats_url": state["nats_url"], "home": state["home"], "processes": processes}))
    else:
        console.print(processes_table(stack, title=f"Swarm at {state['nats_url']} ({state['home']})"))
    if dead:
        raise fail(f"dead: {', '.join(dead)}; `swarm up` restarts them, `swarm restart SERVICE` restarts one")


@app.command()
def restart(service: Annotated[str, typer.Argument(help="A service (worker, dispatcher, ...) or nats.")]) -> None:
    """Restart one service of the local stack (every replica): it drains, stops and starts again."""
    stack = Stack()
    try:
        with console.status(f"restarting {service}") as spinner:
            pids = stack.restart(service, on_step=lambda name: spinner.update(f"restarting {name}"))
    except (StackError, OSError) as exc:
        raise fail(str(exc)) from exc
    console.print(f"Restarted {service}: pid {', '.join(map(str, pids))}")



@app.command()
def report(
    run_id: str,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")] = None,
    as_json: JsonOption = False,
    nats_url: UrlOption = None,
) -> None:
    """A run's analytics: makespan, critical path, concurrency, stragglers, failures, tokens and cost."""
    from swarm.eventlog import EventLogError
    from swarm.ops.analytics import analyze_run, recorder_query
    from swarm.ops.report import render_html, render_terminal

    async def reporting() -> None:
        async with connected(nats_url) as client:
            try:
                analysis = await analyze_run(recorder_query(client.bus.nc), run_id, bus=client.bus)
            except (EventLogError, LookupError) as exc:
                raise fail(str(exc).strip("'\"")) from exc
        if as_json:
            print(json.dumps(dataclasses.asdict(analysis), default=str, indent=2))
        else:
            console.print(render_terminal(analysis))
        if html is not None:
            html.write_text(render_html(analysis))
            (err if as_json else console).print(f"HTML report: {html}")

    asyncio.run(reporting())


# (label with its unit, field or fields): what `swarm stats` shows, in this order.
STATS_ROWS: tuple[tuple[str, str | tuple[str, ...]], ...] = (
    ("runs submitted", "runs_count"),
    ("runs still active", "active_count"),
    ("runs / minute, over the window", "runs_per_window_minute"),
    ("runs / minute, over minutes with a submission", "runs_per_active_minute"),
    ("minutes with a submission", "active_minutes"),
    ("run success rate, finished runs (%)", "success_percent"),
    ("steps succeeded", "steps_succeeded"),
    ("steps / s, first to last step event", "steps_per_s"),
    ("step retries", "retries_count"),
    ("step running time p50 / p95 / p99 (ms)", ("step_ms_p50", "step_ms_p95", "step_ms_p99")),
    ("inference calls / failed", ("inference_calls", "inference_failed")),
    ("time to first token p50 / p95 / p99 (ms)", ("ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99")),
    ("gateway queue time p50 / p99 (ms)", ("queue_ms_p50", "queue_ms_p99")),
    ("decode tokens / s per call, p50", "tokens_per_s_p50"),
    ("cost (USD)", "cost_usd"),
)


def with_rates(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures with runs per minute over the whole window and over the minutes that saw a submission.

    The analytics' own `runs_per_minute` divides by the minutes with a submission only (one run in a
    day is "1.0 per minute"); both rates are given, named for what they are.
    """
    series = figures.get("runs_per_minute_series") or []
    active_minutes = len(series)
    runs_count = int(figures.get("runs_count") or 0)
    window_minutes = max(1.0, float(figures.get("window_s") or 60) / 60)
    rate = figures.get("success_rate")
    rates = {
        "runs_per_window_minute": round(runs_count / window_minutes, 4),
        "runs_per_active_minute": round(runs_count / active_minutes, 3) if active_minutes else None,
        "active_minutes": active_minutes,
        "success_percent": None if rate is None else round(100 * rate, 2),
    }
    return {k: v for k, v in figures.items() if k != "runs_per_minute"} | rates


def stats_table(figures: dict[str, Any], hours: float) -> Table:
    """`swarm stats` for the terminal: labels with units."""

    def shown(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    table = Table(title=f"Swarm, last {hours:g} h", show_header=False, box=box.SIMPLE)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for label, keys in STATS_ROWS:
        fields = (keys,) if isinstance(keys, str) else keys
        table.add_row(label, " / ".join(shown(figures.get(k)) for k in fields))
    return table


@app.command()
def stats(
    hours: Annotated[float, typer.Option(help="How far back to look.")] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    nats_url: UrlOption = None,
) -> None:
    """Across runs: runs per minute, success rate, steps/s, step latency quantiles, gateway TTFT and tokens/s."""
    from swarm.eventlog import EventLogError
    from swarm.ops.analytics import cross_run_stats, recorder_query

    async def collecting() -> None:
        async with connected(nats_url) as client:
            try:
                figures = await cross_run_stats(recorder_query(client.bus.nc), int(hours * 3600))
            except EventLogError as exc:
                raise fail(str(exc)) from exc
        figures = with_rates(figures)
        if as_json:
            print(json.dumps(figures, indent=2))
            return
        console.print(stats_table(figures, hours))

    asyncio.run(collecting())

if __name__ == "__main__":
    app()
