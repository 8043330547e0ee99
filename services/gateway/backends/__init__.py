"""Engine backends behind the one `Engine` protocol (services.gateway.engine), and the factory that picks one.

The backends import the protocol; the protocol imports no backend.
"""

from __future__ import annotations

from services.gateway.engine import Engine
from services.gateway.settings import GatewaySettings


def create_engine(settings: GatewaySettings) -> Engine:
    """The backend the settings name; each is imported only when chosen, so that its dependencies stay optional."""
    if settings.backend == "sim":
        from services.gateway.backends.sim import SimEngine

        return SimEngine(settings)
    if settings.backend == "llamacpp":
        from services.gateway.backends.llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings)
    if settings.backend == "openai":
        from services.gateway.backends.openai import OpenAIEngine

        return OpenAIEngine(settings)
    if settings.backend == "trtllm":
        from services.gateway.backends.trtllm import TrtLlmEngine

        return TrtLlmEngine(settings)
    raise ValueError(f"unknown gateway backend {settings.backend!r}")
