"""Tools agents call through the model's structured output: the interface, the built-ins and the registry."""

from services.worker_pool.tools.base import Tool, ToolContext, ToolError
from services.worker_pool.tools.registry import ToolRegistry, UnknownTool

__all__ = ["Tool", "ToolContext", "ToolError", "ToolRegistry", "UnknownTool"]
