"""`python -m services.planner`: plan submitted tasks until SIGTERM."""

from __future__ import annotations

import logging

import uvloop

from services.planner.app import SERVICE, PlannerService
from services.planner.settings import PlannerSettings
from swarm.service import configure_logging


def main() -> None:
    """Settings, the service, and its faststream app run until SIGTERM/SIGINT (which drain it)."""
    settings = PlannerSettings()
    configure_logging(SERVICE, settings.log_level)
    app = PlannerService(settings).app()
    uvloop.run(app.run(log_level=logging.getLevelName(settings.log_level)))


if __name__ == "__main__":
    main()
