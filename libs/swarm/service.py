"""The common start-up of a service process: logging, uvloop, SIGTERM drains and exits."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop

ServiceMain = Callable[[asyncio.Event], Awaitable[None]]


def configure_logging(service: str, level: str = "INFO") -> None:
    """One log format for every service; the stack writes each service's stderr to its own file."""
    logging.basicConfig(level=level, format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")


def run_service(service: str, main: ServiceMain, log_level: str = "INFO") -> None:
    """Run `main(stop)` on uvloop until SIGTERM/SIGINT sets `stop`; `main` drains and returns."""
    configure_logging(service, log_level)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)
        logging.getLogger(service).info("stopped")

    uvloop.run(runner())
