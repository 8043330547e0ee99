"""Aggregator entry point: `python -m services.aggregator`."""

from __future__ import annotations

from services.aggregator.app import SERVICE, main
from services.aggregator.settings import AggregatorSettings
from swarm.service import run_service

__all__ = ["main"]

if __name__ == "__main__":
    _settings = AggregatorSettings()
    run_service(SERVICE, lambda stop: main(stop, _settings), _settings.log_level)
