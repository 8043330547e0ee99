"""The tool interface: a name, a description, a JSON schema of the arguments, and an async call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from swarm.contracts import SpawnBudget, SpawnRequest

if TYPE_CHECKING:
    from services.worker_pool.settings import WorkerSettings
    from swarm.bus import Bus

ToolOutput = str | dict[str, Any] | list[Any]


class ToolError(Exception):
    """The call failed in a way the model should hear about (bad arguments, limit hit); the step goes on."""


@dataclass
class ToolContext:
    """What a tool may know about the step that calls it, and where it leaves side effects."""

    run_id: str
    tenant: str
    step_id: str
    agent_id: str
    attempt: int
    settings: WorkerSettings
    bus: Bus | None = None
    spawns: list[SpawnRequest] = field(default_factory=list)
    spawn_budget: SpawnBudget | None = None  # room left under the run's limits, when the step was dispatched

    def spawned(self) -> SpawnRequest | None:
        """Every spawn request of the step merged into one (None when there was none)."""
        if not self.spawns:
            return None
        agents = tuple(a for request in self.spawns for a in request.agents)
        steps = tuple(s for request in self.spawns for s in request.steps)
        return SpawnRequest(agents=agents, steps=steps)


class Tool(ABC):
    """Base of every tool; user tools subclass it and register through the `swarm.tools` entry point group."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]] = {"type": "object"}
    timeout_s: float | None = None  # None: the worker's tool_timeout_s

    @abstractmethod
    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutput:
        """Run the tool; raise ToolError for failures the model should see."""
