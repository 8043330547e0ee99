"""The `swarm` command: the local stack, tasks, runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
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

from swarm.client import StackNotRunning, SwarmClient
from swarm.contracts import DEFAULT_TENANT, Plan, PlanPattern, RunCompleted, RunPolicy, RunSummary
from swarm.settings import NatsSettings, StackSettings
from swarm.stack import Stack, StackAlreadyRunning, StackError

app = typer.Typer(help="Swarm: massive multi-agent runs over NATS JetStream.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


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


@app.command()
def up(
    backend: Annotated[str | None, typer.Option(help="Inference backend: llamacpp or sim.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker-pool processes.")] = None,
) -> None:
    """Start the local stack: nats-server and every service, each its own process."""
    overrides = {k: v for k, v in {"gateway_backend": backend, "workers": workers}.items() if v is not None}
    stack = Stack(StackSettings(**overrides))
    try:
        with console.status("starting") as status:
            state = stack.up(on_step=lambda name: status.update(f"starting {name}"))
    except StackAlreadyRunning as exc:
        console.print(f"[yellow]{exc}[/]")
        return
    except (StackError, OSError) as exc:
        raise fail(str(exc)) from exc
    table = Table("service", "pid", "log", title=f"Swarm is up at {state['nats_url']}")
    for service in state["services"]:  # type: ignore[attr-defined]
        table.add_row(service["name"], str(service["pid"]), service["log"])
    console.print(table)


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
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Show progress and the answer.")] = False,
    nats_url: UrlOption = None,
) -> None:
    """Submit a task; with --follow, show its progress, then the answer and a run summary."""
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
    asyncio.run(_submit(goal, plan, pattern, agents, policy, tenant, follow, nats_settings(nats_url)))


async def _submit(
    goal: str | None, plan: Plan | None, pattern: PlanPattern | None, agents: int | None,
    policy: RunPolicy, tenant: str, follow: bool, settings: NatsSettings,
) -> None:  # fmt: skip
    async with connected(settings) as client:
        try:
            run_id = await client.submit(goal, plan=plan, pattern=pattern, n_agents=agents, policy=policy, tenant=tenant)
        except StackNotRunning as exc:
            raise fail(str(exc)) from exc
        console.print(f"Submitted run [bold]{run_id}[/]")
        if follow:
            await _follow(client, run_id, tenant)


async def _follow(client: SwarmClient, run_id: str, tenant: str) -> None:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("planning", total=None)
        async for event in client.events(run_id, tenant):
            if event.kind == "planned":
                n_agents, n_steps = len(event.plan.agents), len(event.plan.steps)
                note = f" ({event.note})" if event.note else ""
                progress.console.print(
                    f"Planned: {n_agents} agents, {n_steps} steps, from {event.source.value}{note}"
                )
                progress.update(bar, description="running steps", total=n_steps, completed=0)
            elif event.kind == "progress":
                progress.update(bar, completed=event.steps_succeeded + event.steps_failed)
            elif event.kind == "executed":
                progress.update(bar, completed=event.summary.steps_succeeded + event.summary.steps_failed)
                progress.update(bar, description="synthesizing")
            elif event.kind == "completed":
                progress.update(bar, description="done")
                final = event
            else:
                final = event
    if isinstance(final, RunCompleted):
        console.print(Panel(Markdown(final.answer), title=f"Answer — run {run_id}", border_style="green"))
        console.print(summary_table(final.summary))
        return
    reason = getattr(final, "error", None) or getattr(final, "reason", "")
    raise fail(f"run {run_id} {final.kind}: {reason}")


def summary_table(summary: RunSummary) -> Table:
    """A run summary for the terminal."""
    table = Table(title="Run summary", show_header=False)
    rows = {
        "agents": summary.agents_count,
        "steps": f"{summary.steps_succeeded} succeeded, {summary.steps_failed} failed of {summary.steps_total}",
        "retries": summary.retries_count,
        "tokens": f"{summary.prompt_tokens} prompt + {summary.completion_tokens} completion",
        "wall time": f"{summary.wall_ms / 1000:.1f} s",
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


@app.command()
def runs(limit: Annotated[int, typer.Option(help="How many.")] = 20, nats_url: UrlOption = None) -> None:
    """List recent runs and their status."""

    async def listing() -> None:
        async with connected(nats_url) as client:
            records = await client.runs(limit)
        table = Table("run", "status", "agents", "steps", "submitted", "goal")
        for r in records:
            submitted = f"{r.submitted_at:%Y-%m-%d %H:%M:%S}" if r.submitted_at else ""
            table.add_row(r.run_id, r.status.value, str(r.agents_count), str(r.steps_total), submitted, r.goal[:60])
        console.print(table)

    asyncio.run(listing())


@app.command()
def cancel(run_id: str, tenant: str = DEFAULT_TENANT, nats_url: UrlOption = None) -> None:
    """Cancel a run: its queued steps are dropped."""

    async def cancelling() -> None:
        async with connected(nats_url) as client:
            await client.cancel(run_id, tenant)
        console.print(f"Cancellation of {run_id} requested.")

    asyncio.run(cancelling())


@app.command()
def loadtest(
    scenario: Annotated[str, typer.Option(help="Scenario: fanout-300, chain-200, swarm-300x4000, faults-5pct, ...")],
    latency_scale: Annotated[float, typer.Option(min=0, help="Multiplies the simulated step latencies (0: none).")] = 1.0,
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
) -> None:
    """Drive the real services (sim backend) with a scenario; a table of figures, and JSON with --json."""
    from loadtest.runner import LoadtestError, LoadtestOptions, failed_targets, report_table, run_loadtest

    options = LoadtestOptions(
        scenario=scenario, latency_scale=latency_scale, runs=runs, seed=seed, nats_url=nats_url, home=home,
        workers=workers, worker_concurrency=worker_concurrency, scale_steps=scale_steps, run_timeout_s=timeout_s,
        floor=floor,
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
    problems = failed_targets(report)
    if problems:
        raise fail("; ".join(problems))


@app.command()
def status() -> None:
    """Show whether the local stack runs, and its processes."""
    state = Stack().state()
    if state is None:
        console.print("No local stack is running: `swarm up` starts one.")
        raise typer.Exit(1)
    console.print_json(json.dumps(state))



@app.command()
def report(
    run_id: str,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")] = None,
    nats_url: UrlOption = None,
) -> None:
    """A run's analytics: makespan, critical path, concurrency, stragglers, failures, tokens and cost."""
    from swarm.analytics import analyze_run, recorder_query
    from swarm.eventlog import EventLogError
    from swarm.report import render_html, render_terminal

    async def reporting() -> None:
        async with connected(nats_url) as client:
            try:
                analysis = await analyze_run(recorder_query(client.bus.nc), run_id, bus=client.bus)
            except (EventLogError, LookupError) as exc:
                raise fail(str(exc).strip("'\"")) from exc
        console.print(render_terminal(analysis))
        if html is not None:
            html.write_text(render_html(analysis))
            console.print(f"HTML report: {html}")

    asyncio.run(reporting())


@app.command()
def stats(
    hours: Annotated[float, typer.Option(help="How far back to look.")] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    nats_url: UrlOption = None,
) -> None:
    """Across runs: runs per minute, success rate, steps/s, step latency quantiles, gateway TTFT and tokens/s."""
    from swarm.analytics import cross_run_stats, recorder_query
    from swarm.eventlog import EventLogError

    async def collecting() -> None:
        async with connected(nats_url) as client:
            try:
                figures = await cross_run_stats(recorder_query(client.bus.nc), int(hours * 3600))
            except EventLogError as exc:
                raise fail(str(exc)) from exc
        if as_json:
            console.print_json(json.dumps(figures))
            return
        table = Table(title=f"Swarm, last {hours:g} h", show_header=False)
        for key, value in figures.items():
            if key != "runs_per_minute_series":
                table.add_row(key, "-" if value is None else str(value))
        console.print(table)

    asyncio.run(collecting())

if __name__ == "__main__":
    app()
