"""`swarm top`: a live terminal view of a stack, refreshed about once a second, in the spirit of htop.

It reads only what an operator (or, with `--tenant`, a tenant) may read: the health probes of the
services, the RUNS stream (lifecycle events), the recorder's query path and the recorder consumer's
info. Keys: q quits, up/down (or k/j) select the run whose agents are shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from rich import box
from rich.console import Console, ConsoleDimensions, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from swarm.client import SwarmClient
from swarm.contracts import RUN_EVENT, RUNS, RunEventKind, RunStatus, Subjects
from swarm.eventlog import EventLogError
from swarm.ops.queries import query_via_recorder
from swarm.ops.runview import RunView
from swarm.ops.stack import SERVICE_ORDER

HEALTH_WAIT_S = 0.4  # replies to a health probe arrive within this (every replica answers)
GATEWAY_SQL_EVERY_S = 5.0  # the recorder's figures cost a query: not every refresh
RESTART_SHOWN_S = 30.0
DEAD_AFTER_MISSED = 2
RATE_WINDOW_S = 5.0
RUNS_HEARTBEAT_S = 5.0  # the runs consumer's idle heartbeat; three missed and it is created again  # a service whose instances changed is shown as restarted this long
GATEWAY_WINDOW_S = 30

GATEWAY_SQL = f"""
SELECT count() AS calls_count,
       quantileOrNull(0.5)(ttft_ms) AS ttft_ms_p50,
       sum(completion_tokens) AS completion_tokens
FROM swarm.inference_calls
WHERE at > now64(6) - INTERVAL {GATEWAY_WINDOW_S} SECOND
"""


@dataclass
class ServiceHealth:
    """What the probes of one service heard: one reply per live replica."""

    name: str
    replies: list[dict[str, Any]] = field(default_factory=list)
    instances: frozenset[str] = frozenset()  # every replica ever heard ("host:pid")
    changed_at: float | None = None  # when a replica not heard before answered (a restart)
    missed: int = 0  # probes in a row nobody answered
    most_replicas: int = 0  # the most replicas that answered one probe

    @property
    def alive(self) -> bool:
        """Some replica answered one of the last two probes (one late answer on a busy machine is not a death)."""
        return self.missed < DEAD_AFTER_MISSED

    def total(self, key: str) -> float:
        """A figure summed over the replicas."""
        return sum(float(r.get(key) or 0) for r in self.replies)

    def counters(self, key: str) -> dict[str, float]:
        """A counter per replica."""
        return {str(r.get("instance")): float(r.get(key) or 0) for r in self.replies}


@dataclass
class Rate:
    """Per-second rate of counters kept by several replicas, over the last RATE_WINDOW_S.

    Replica by replica, so a replica missing from one probe or restarted (its counter back to 0) does not
    show as a jump."""

    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def update(self, now: float, counters: dict[str, float]) -> None:
        """Feed a new sample."""
        if counters:
            self.samples.append((now, counters))
            self.samples = [(t, c) for t, c in self.samples if now - t <= RATE_WINDOW_S]

    @property
    def value(self) -> float | None:
        """Sum over replicas of their growth per second; None before two samples."""
        if len(self.samples) < 2:
            return None
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        grown = sum(max(0.0, value - first[instance]) for instance, value in last.items() if instance in first)
        return grown / (t1 - t0) if t1 > t0 else None


@dataclass
class TopState:
    """Everything the screen shows, updated by the readers."""

    url: str
    runs: dict[str, RunView] = field(default_factory=dict)
    services: dict[str, ServiceHealth] = field(default_factory=dict)
    selected: str | None = None
    recorder_lag: int | None = None
    gateway_sql: dict[str, Any] = field(default_factory=dict)
    worker_rate: Rate = field(default_factory=Rate)
    gateway_rate: Rate = field(default_factory=Rate)
    errors: dict[str, str] = field(default_factory=dict)  # source -> last error (a permission, a dead recorder)

    def ordered_runs(self) -> list[RunView]:
        """Runs in flight first, then the others; newest first within each."""
        views = sorted(self.runs.values(), key=lambda v: v.started_at, reverse=True)  # first seen: stream order
        return [v for v in views if v.status in IN_FLIGHT] + [v for v in views if v.status not in IN_FLIGHT]

    def move(self, delta: int) -> None:
        """Select the previous or next run."""
        ids = [v.run_id for v in self.ordered_runs()]
        if not ids:
            return
        index = ids.index(self.selected) if self.selected in ids else 0
        self.selected = ids[max(0, min(len(ids) - 1, index + delta))]


IN_FLIGHT = (RunStatus.PLANNING, RunStatus.RUNNING, RunStatus.SYNTHESIZING)


class Top:
    """Reads the stack into a TopState and draws it until `q`."""

    def __init__(self, client: SwarmClient, url: str, tenant: str | None, since_s: float, console: Console) -> None:
        self.client = client
        self.console = console
        self.nc = client.bus.nc
        self.tenant = tenant
        self.since_s = since_s
        self.state = TopState(url)
        self.quit = asyncio.Event()
        self._runs_sub: Subscription | None = None
        self._last_seq = 0  # the RUNS stream sequence of the last event seen
        self._heard_at = time.monotonic()  # the last event or heartbeat of the runs consumer

    # ------------------------------------------------------------------ readers

    async def watch_runs(self) -> None:
        """Every lifecycle event of the recent runs, then the new ones, through one push consumer.

        Re-created after the last event seen when its heartbeats stop (a NATS restart drops it)."""
        if self._runs_sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._runs_sub.unsubscribe()
        self._runs_sub = sub = await self.nc.subscribe(self.nc.new_inbox(), cb=self._on_run_message)
        subject = Subjects.tenant_runs_all(self.tenant) if self.tenant else RUNS.subjects[0]
        start: dict[str, Any] = (
            {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self._last_seq + 1} if self._last_seq
            else {"deliver_policy": DeliverPolicy.BY_START_TIME,
                  "opt_start_time": (datetime.now(UTC) - timedelta(seconds=self.since_s)).isoformat()}
        )  # fmt: skip
        config = ConsumerConfig(
            name=f"top-{secrets.token_hex(6)}", filter_subject=subject, deliver_subject=sub.subject,
            ack_policy=AckPolicy.NONE, flow_control=True, idle_heartbeat=RUNS_HEARTBEAT_S, mem_storage=True,
            num_replicas=1, inactive_threshold=30.0, **start,
        )  # fmt: skip
        self._heard_at = time.monotonic()
        try:
            await self.nc.jsm().add_consumer(RUNS.name, config)
            self.state.errors.pop("runs", None)
        except (nats.errors.Error, TimeoutError) as exc:
            self.state.errors["runs"] = f"cannot read RUNS: {type(exc).__name__} {exc}"

    async def _on_run_message(self, msg: Msg) -> None:
        self._heard_at = time.monotonic()
        if not msg.data:  # heartbeat or flow control
            if msg.reply:
                await msg.respond(b"")
            return
        if msg.metadata.sequence.stream <= self._last_seq:
            return  # delivered again by a re-created consumer
        self._last_seq = msg.metadata.sequence.stream
        try:
            event = RUN_EVENT.validate_json(msg.data)
        except ValueError:
            return  # not a run event: nothing to show (the followers log these)
        if event.kind == RunEventKind.CANCEL:
            return
        view = self.state.runs.setdefault(event.run_id, RunView(event.run_id))
        view.apply(event)
        if self.state.selected is None or self.state.runs[self.state.selected].status not in IN_FLIGHT:
            if view.status in IN_FLIGHT:
                self.state.selected = event.run_id

    async def probe_services(self) -> None:
        """One health probe to every service; every replica answers on one inbox."""
        inbox = self.nc.new_inbox()
        replies: dict[str, list[dict[str, Any]]] = {s.name: [] for s in SERVICE_ORDER}

        async def on_reply(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                body = json.loads(msg.data)
                if body.get("service") in replies:
                    replies[body["service"]].append(body)

        sub = await self.nc.subscribe(f"{inbox}.*", cb=on_reply)
        try:
            for service in replies:
                await self.nc.publish(Subjects.health(service), b"", reply=f"{inbox}.{service}")
            await asyncio.sleep(HEALTH_WAIT_S)
        finally:
            await sub.unsubscribe()
        now = time.monotonic()
        for name, found in replies.items():
            health = self.state.services.setdefault(name, ServiceHealth(name))
            instances = frozenset(str(r.get("instance")) for r in found)
            if health.instances and instances - health.instances:  # a replica never seen: a (re)start
                health.changed_at = now
            health.missed = 0 if found else health.missed + 1
            health.instances |= instances
            health.most_replicas = max(health.most_replicas, len(found))
            if found or not health.alive:
                health.replies = found
        self.state.worker_rate.update(now, self.state.services["worker"].counters("steps_done"))
        self.state.gateway_rate.update(now, self.state.services["gateway"].counters("served_count"))

    async def read_recorder(self) -> None:
        """The recorder's lag behind EVENTS (its consumer's pending count)."""
        try:
            self.state.recorder_lag = await self.client.recorder_backlog(timeout_s=1.0)
            if self.state.recorder_lag is None:
                self.state.errors["recorder"] = "recorder consumer: NotFoundError"
            else:
                self.state.errors.pop("recorder", None)
        except (nats.errors.Error, TimeoutError) as exc:
            self.state.recorder_lag = None
            self.state.errors["recorder"] = f"recorder consumer: {type(exc).__name__}"

    async def read_gateway_figures(self) -> None:
        """TTFT p50 and tokens/s of the last GATEWAY_WINDOW_S seconds, from the event log."""
        try:
            rows = await query_via_recorder(self.nc, GATEWAY_SQL, timeout_s=3.0)
            self.state.gateway_sql = rows[0] if rows else {}
            self.state.errors.pop("gateway figures", None)
        except EventLogError as exc:
            self.state.errors["gateway figures"] = str(exc)

    async def poll(self) -> None:
        """Refresh the health and recorder figures about once a second until quit."""
        last_sql = 0.0
        figures: asyncio.Task[None] | None = None
        while not self.quit.is_set():
            started = time.monotonic()
            await asyncio.gather(self.probe_services(), self.read_recorder())
            if started - self._heard_at > 3 * RUNS_HEARTBEAT_S:
                await self.watch_runs()
            if started - last_sql >= GATEWAY_SQL_EVERY_S and (figures is None or figures.done()):
                last_sql = started
                figures = asyncio.create_task(self.read_gateway_figures())  # slow: not in the refresh's way
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.quit.wait(), max(0.1, 1.0 - (time.monotonic() - started)))

    def on_key(self, key: str) -> None:
        """q quits; arrows or j/k select a run."""
        if key in ("q", "Q", "\x03"):
            self.quit.set()
        elif key in ("\x1b[A", "k"):
            self.state.move(-1)
        elif key in ("\x1b[B", "j"):
            self.state.move(1)

    # ------------------------------------------------------------------ drawing

    def __rich__(self) -> Group:
        return render(self.state, self.console.size)


def render(state: TopState, size: ConsoleDimensions) -> Group:
    """The whole screen."""
    width, height = size.width, size.height
    now = time.monotonic()
    header = Text.assemble(
        ("swarm top", "bold"), f"  {state.url}  {datetime.now():%H:%M:%S}  ", ("q quit  ↑/↓ select run", "dim")
    )
    parts: list[Any] = [header, services_line(state, now), pool_lines(state)]
    runs = state.ordered_runs()
    in_flight = sum(1 for v in runs if v.status in IN_FLIGHT)
    runs_shown = runs[: max(3, min(8, height // 5))]
    parts.append(Text(f"Runs: {in_flight} in flight, {len(runs)} seen", style="bold"))
    parts.append(runs_table(runs_shown, state.selected, width))
    selected = state.runs.get(state.selected or "")
    if selected is not None:
        used = 8 + len(runs_shown) + 4
        parts.append(Text(f"Agents of {selected.run_id} ({len(selected.agents)} agents)", style="bold"))
        parts.append(selected.agents_table(max(3, height - used - 2), now=now, width=width))
    for source, error in state.errors.items():
        parts.append(Text(f"{source}: {error}", style="yellow", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def services_line(state: TopState, now: float) -> Text:
    """Every service: alive (with its replica count), restarted lately, or dead."""
    line = Text("services: ")
    for service in SERVICE_ORDER:
        health = state.services.get(service.name)
        if health is None:
            line.append(f"{service.name} ? ", style="dim")
        elif not health.alive:
            line.append(f"{service.name} DEAD ", style="bold red")
        elif health.changed_at is not None and now - health.changed_at < RESTART_SHOWN_S:
            line.append(f"{service.name} x{len(health.replies)} restarted ", style="yellow")
        elif len(health.replies) < health.most_replicas:
            line.append(f"{service.name} x{len(health.replies)} of {health.most_replicas} ", style="yellow")
        else:
            line.append(f"{service.name} x{len(health.replies)} ", style="green")
    return line


def _figure(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def pool_lines(state: TopState) -> Table:
    """Worker pool, gateway and recorder figures, one line each."""
    worker = state.services.get("worker", ServiceHealth("worker"))
    gateway = state.services.get("gateway", ServiceHealth("gateway"))
    recorder = state.services.get("recorder", ServiceHealth("recorder"))
    sql = state.gateway_sql
    tokens_per_s = float(sql["completion_tokens"]) / GATEWAY_WINDOW_S if sql.get("completion_tokens") is not None else None
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(no_wrap=True, overflow="ellipsis")
    table.add_row(
        "workers",
        f"{worker.total('running'):.0f} in flight of {worker.total('concurrency'):.0f} slots, "
        f"{_figure(state.worker_rate.value, '{:.1f}')} steps/s",
    )
    table.add_row(
        "gateway",
        f"queue {gateway.total('queued'):.0f}, running {gateway.total('running'):.0f}, "
        f"{_figure(state.gateway_rate.value, '{:.1f}')} req/s, "
        f"TTFT p50 {_figure(sql.get('ttft_ms_p50'), '{:.0f} ms')}, {_figure(tokens_per_s, '{:.0f}')} tokens/s, "
        f"overloaded {gateway.total('rejected_count'):.0f}",
    )
    table.add_row(
        "recorder",
        f"lag {_figure(state.recorder_lag)} events behind EVENTS, "
        f"{recorder.total('events_recorded'):.0f} recorded, {recorder.total('failed_inserts'):.0f} failed inserts",
    )
    return table


def runs_table(runs: list[RunView], selected: str | None, width: int) -> Table:
    """Runs with their progress; the selected one marked."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, width=width, expand=True)
    table.add_column(" run", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("progress", ratio=1, min_width=10)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("steps/s", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    table.add_column("retries", justify="right", no_wrap=True)
    for view in runs:
        mark = ">" if view.run_id == selected else " "
        bar = ProgressBar(total=max(1, view.steps_total), completed=view.steps_done)
        table.add_row(
            f"{mark}{view.run_id}", view.status, bar, f"{view.steps_done}/{view.steps_total}",
            f"{view.steps_per_s():.1f}" if view.status in IN_FLIGHT else "", str(view.steps_failed), str(view.retries_count),
            style="reverse" if view.run_id == selected else None,
        )  # fmt: skip
    return table


@contextlib.contextmanager
def keys(on_key: Any) -> Iterator[None]:
    """Deliver single key presses from a terminal on stdin (cbreak mode) to `on_key`; nothing without one."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        data = os.read(fd, 32).decode(errors="replace")
        if data.startswith("\x1b["):
            on_key(data[:3])
        else:
            for char in data:
                on_key(char)

    tty.setcbreak(fd)
    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(client: SwarmClient, url: str, tenant: str | None, since_s: float, console: Console) -> None:
    """Draw until `q` (or Ctrl-C)."""
    top = Top(client, url, tenant, since_s, console)
    await top.watch_runs()
    poller = asyncio.create_task(top.poll())
    try:
        with keys(top.on_key), Live(top, console=console, screen=True, auto_refresh=False) as live:
            while not top.quit.is_set():
                live.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(top.quit.wait(), 1.0)
    finally:
        top.quit.set()
        await poller
