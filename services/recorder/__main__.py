"""`python -m services.recorder`: the event stream into ClickHouse."""

from __future__ import annotations

import asyncio
import os

from services.recorder.service import run_recorder
from services.recorder.settings import RecorderSettings
from swarm.service import run_service


def main() -> None:
    """Run the recorder until SIGTERM."""
    settings = RecorderSettings()
    os.nice(settings.nice)

    async def record(stop: asyncio.Event) -> None:
        await run_recorder(settings, stop)

    run_service("recorder", record, settings.log_level)


if __name__ == "__main__":
    main()
