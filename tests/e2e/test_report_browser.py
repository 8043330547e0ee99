"""The HTML report of a `make run` run, opened in headless Chromium: the answer and every step's output are
on the rendered page (the DOM's innerText, which leaves out what is collapsed), and a screenshot is taken.

The stack runs the `make run` goal through `swarm submit --follow` on the sim backend: a real local-model
run took 37 s on a quiet machine and 181 s on a busy one (planning timed out), too much for CI next to the
llm-marked answer tests; the report's code path is the same. docs/report-screenshot.png is from a real
SmolLM2 run (docs/README.md says how to make one).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from swarm.client import SwarmClient
from swarm.contracts import RunCompleted
from swarm.ops.analytics import read_outputs
from swarm.ops.stack import Stack
from swarm.settings import NatsSettings, StackSettings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GOAL = "Compare solar, wind and hydro power in Germany, Spain and Norway"  # the Makefile's GOAL
CHROMIUM = shutil.which("chromium")
# The in-page script that copies the rendered text into the DOM, so --dump-dom hands it to us.
RENDERED_TEXT = (
    "<script>const t = document.createElement('pre'); t.id = 'rendered-text'; "
    "t.textContent = document.body.innerText; document.body.appendChild(t);</script>"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("swarm-report-home")
    settings = StackSettings(
        home=home, nats_port=0, nats_monitor_port=0, gateway_backend="sim", workers=1
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SWARM_GATEWAY_SIM_LATENCY_SCALE", "0.05")
        running = Stack(settings)
        running.up(timeout_s=180)
    yield running
    running.down()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm.ops.cli", *args], capture_output=True, text=True, timeout=180,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def chromium(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={home}")  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


class ElementText(HTMLParser):
    """The text inside the element with a given id (the dumped DOM is well-formed: Chromium serialized it)."""

    def __init__(self, element_id: str) -> None:
        super().__init__()
        self.element_id = element_id
        self.depth = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth or ("id", self.element_id) in attrs:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.text.append(data)


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def run_content(nats_url: str) -> tuple[str, str, dict[str, str]]:
    """The run of the goal (this stack's only one), its answer and its step outputs."""
    async with await SwarmClient.connect(NatsSettings(url=nats_url)) as client:
        (run_id,) = [r.run_id for r in await client.runs() if r.goal == GOAL]
        final = await client.wait(run_id, timeout_s=60)
        assert isinstance(final, RunCompleted), final
        return run_id, final.answer, await read_outputs(client.bus, final.tenant, run_id)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make install` installs it as root)")
def test_the_html_report_of_a_make_run_run_shows_the_answer_and_the_outputs(stack: Stack, tmp_path: Path) -> None:
    submitted = cli("submit", GOAL, "--follow", "--nats-url", stack.nats_url)  # what `make run` does
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    run_id, answer, outputs = asyncio.run(run_content(stack.nats_url))
    assert answer.strip() and outputs

    html_file = tmp_path / "report.html"
    for _ in range(50):  # the recorder writes in batches: the report needs the run's row and every step
        reported = cli("report", run_id, "--html", str(html_file), "--nats-url", stack.nats_url)
        assert reported.returncode == 0, reported.stdout + reported.stderr
        done = f"{len(outputs)} succeeded of {len(outputs)}" in reported.stdout and "completed" in reported.stdout
        # The gateway's inference events come in batches too: wait for the aggregator's row in the token table
        # (the console's text names "synthesis" before any synthesis call is recorded).
        if done and "<td>synthesis</td><td>aggregator</td>" in html_file.read_text():
            break
        time.sleep(0.2)
    else:
        raise AssertionError(reported.stdout)

    probe = tmp_path / "probe.html"
    probe.write_text(html_file.read_text().replace("</body>", RENDERED_TEXT + "</body>"))
    dumped = chromium("--dump-dom", probe.as_uri(), home=tmp_path / "chromium")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = ElementText("rendered-text")
    parser.feed(dumped.stdout)
    rendered = words("".join(parser.text))
    assert rendered, dumped.stdout[:2000]

    assert words(answer)[:300] in rendered
    assert rendered.index(words(answer)[:80]) < rendered.index("Summary")  # the answer comes first
    for step_id, output in outputs.items():
        assert words(output)[:200] in rendered, f"the output of {step_id} is not on the page"
    tokens = rendered[rendered.index("Tokens and cost by phase, agent and model") :]
    assert "planning planner" in tokens and "synthesis aggregator" in tokens and "(none)" not in tokens

    screenshot = tmp_path / "report.png"
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1100,2000", html_file.as_uri(), home=tmp_path / "c2")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png_size(screenshot) == (1100, 2000) and screenshot.stat().st_size > 20_000
