"""The `swarm` command: the local stack, tasks, runs."""

from __future__ import annotations

import asyncio
import json
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
    try:
        client = await SwarmClient.connect(settings)
    except StackNotRunning as exc:
        raise fail(str(exc)) from exc
    async with client:
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
        try:
            client = await SwarmClient.connect(nats_settings(nats_url))
        except StackNotRunning as exc:
            raise fail(str(exc)) from exc
        async with client:
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
        try:
            client = await SwarmClient.connect(nats_settings(nats_url))
        except StackNotRunning as exc:
            raise fail(str(exc)) from exc
        async with client:
            await client.cancel(run_id, tenant)
        console.print(f"Cancellation of {run_id} requested.")

    asyncio.run(cancelling())


@app.command()
def status() -> None:
    """Show whether the local stack runs, and its processes."""
    state = Stack().state()
    if state is None:
        console.print("No local stack is running: `swarm up` starts one.")
        raise typer.Exit(1)
    console.print_json(json.dumps(state))


if __name__ == "__main__":
    app()
