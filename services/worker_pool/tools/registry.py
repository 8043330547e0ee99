"""The tools a worker offers: the built-ins plus user tools from the `swarm.tools` entry point group."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from services.worker_pool.settings import WorkerSettings
from services.worker_pool.tools.base import Tool
from services.worker_pool.tools.builtin import HttpFetchTool, PythonTool, ScratchpadTool, SpawnTool

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "swarm.tools"
BUILTIN_NAMES = ("python", "scratchpad", "spawn", "http_fetch")


class UnknownTool(LookupError):
    """A step asks for a tool this worker does not offer (never registered, disabled, or failed to load)."""


def _as_tool(obj: object) -> Tool:
    """An entry point's object as a tool: a Tool instance, a Tool subclass, or a zero-argument factory."""
    if isinstance(obj, type) and issubclass(obj, Tool):
        obj = obj()
    elif not isinstance(obj, Tool) and callable(obj):
        obj = obj()
    if not isinstance(obj, Tool):
        raise TypeError(f"{obj!r} is not a swarm Tool")
    for attribute in ("name", "description", "parameters"):
        if not getattr(obj, attribute, None):
            raise TypeError(f"tool {obj!r} has no {attribute}")
    return obj


class ToolRegistry:
    """Tools by name, and why a missing name is missing."""

    def __init__(self, tools: Iterable[Tool] = (), unavailable: dict[str, str] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self._unavailable: dict[str, str] = dict(unavailable or {})
        for tool in tools:
            self.register(tool)

    @classmethod
    def for_worker(cls, settings: WorkerSettings, group: str = ENTRY_POINT_GROUP) -> ToolRegistry:
        """The built-ins configured by `settings`, then every user tool of the entry point group."""
        registry = cls([PythonTool.from_settings(settings), ScratchpadTool(), SpawnTool()])
        if settings.http_fetch_enabled:
            registry.register(HttpFetchTool.from_settings(settings))
        else:
            registry._unavailable["http_fetch"] = "disabled on this worker (SWARM_WORKER_HTTP_FETCH_ENABLED=false)"
        registry.load_entry_points(group)
        return registry

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register user tools; one that fails to load is logged and reported when a step asks for it."""
        for ep in entry_points(group=group):
            if ep.name in BUILTIN_NAMES:
                log.warning("entry point %s=%s ignored: %r is a built-in tool", ep.name, ep.value, ep.name)
                continue
            try:
                tool = _as_tool(ep.load())
            except Exception as exc:  # an import error in a plug-in must not stop the worker
                log.error("tool entry point %s=%s failed to load: %s", ep.name, ep.value, exc)
                self._unavailable[ep.name] = f"failed to load ({type(exc).__name__}: {exc})"
                continue
            if tool.name != ep.name:
                log.warning("tool entry point %r names a tool called %r; registered as %r", ep.name, tool.name, tool.name)
            self.register(tool)

    def register(self, tool: Tool) -> None:
        """Add (or replace) a tool."""
        self._tools[tool.name] = tool
        self._unavailable.pop(tool.name, None)

    def names(self) -> tuple[str, ...]:
        """The names offered, sorted."""
        return tuple(sorted(self._tools))

    def get(self, name: str) -> Tool:
        """The tool called `name`; UnknownTool with the reason when there is none."""
        try:
            return self._tools[name]
        except KeyError:
            reason = self._unavailable.get(name, f"not registered (available: {', '.join(self.names()) or 'none'})")
            raise UnknownTool(f"unknown tool {name!r}: {reason}") from None

    def resolve(self, names: Iterable[str]) -> dict[str, Tool]:
        """The tools a step asks for, in order; UnknownTool naming every missing one."""
        found, errors = {}, []
        for name in names:
            try:
                found[name] = self.get(name)
            except UnknownTool as exc:
                errors.append(str(exc))
        if errors:
            raise UnknownTool("; ".join(errors))
        return found
