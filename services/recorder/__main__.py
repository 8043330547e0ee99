"""`python -m services.recorder`: the event stream into ClickHouse."""

from __future__ import annotations

import asyncio
import gc

from services.recorder.service import run_recorder
from services.recorder.settings import RecorderSettings
from swarm.service import run_service

# Written for speed. The recorder decodes every event into a model (a few container objects each) and
# holds thousands until their insert: at the default threshold (700 allocations) the collector ran every
# couple of hundred events and rescanned the held batch each time, about a quarter of the recorder's CPU
# in a replay of a 300x4000 run's events. What it allocates per event forms no cycles (reference counting
# frees it), so collecting rarely loses nothing; cyclic garbage waits at most this many allocations.
GC_GEN0_THRESHOLD = 200_000


def tune_gc() -> None:
    """Collect garbage rarely, and never rescan what start-up loaded (modules, settings)."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, gen0), gen1, gen2)


def main() -> None:
    """Run the recorder until SIGTERM."""
    settings = RecorderSettings()
    tune_gc()

    async def record(stop: asyncio.Event) -> None:
        await run_recorder(settings, stop)

    run_service("recorder", record, settings.log_level)


if __name__ == "__main__":
    main()
