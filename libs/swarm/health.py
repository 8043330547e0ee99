"""Container health check: `python -m swarm.health <service>` exits 0 when this host's replica answers its probe.

Every replica answers `Subjects.health(<service>)` with its instance (`<hostname>:<pid>`); the check
collects answers for a moment and passes when one comes from this host (the container), so a
healthy sibling replica does not hide a stuck one. `--any` accepts any replica. NATS connection
settings are the service's own (SWARM_NATS_*), so the probe uses the service's user.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys

import nats.errors
from nats.aio.msg import Msg

from swarm.bus import Bus
from swarm.contracts import Subjects
from swarm.settings import NatsSettings


async def probe(service: str, settings: NatsSettings, wait_s: float = 2.0, any_replica: bool = False) -> bool:
    """Whether a replica of `service` on this host (or any, with `any_replica`) answers within `wait_s`."""
    host = socket.gethostname()
    try:
        bus = await asyncio.wait_for(Bus.connect(settings, "health"), wait_s)
    except (OSError, TimeoutError, nats.errors.Error):
        return False
    try:
        inbox = bus.nc.new_inbox()
        answered = asyncio.Event()

        async def on_answer(msg: Msg) -> None:
            try:
                body = json.loads(msg.data)
                instance = str(body.get("instance", ""))
            except (ValueError, AttributeError):
                return
            # A replica whose loop died (and is being restarted) answers, but is not healthy.
            if (any_replica or instance.startswith(f"{host}:")) and body.get("healthy", True):
                answered.set()

        sub = await bus.nc.subscribe(inbox, cb=on_answer)
        await bus.nc.publish(Subjects.health(service), b"", reply=inbox)
        try:
            await asyncio.wait_for(answered.wait(), wait_s)
        except TimeoutError:
            return False
        finally:
            await sub.unsubscribe()
        return True
    finally:
        await bus.nc.close()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when healthy, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m swarm.health", description=__doc__.splitlines()[0])
    parser.add_argument(
        "service", help="health name: planner, dispatcher, worker, aggregator, gateway, recorder"
    )
    parser.add_argument("--wait", type=float, default=2.0, help="seconds to wait for the answer")
    parser.add_argument("--any", action="store_true", help="accept an answer from any replica")
    args = parser.parse_args(argv)
    healthy = asyncio.run(probe(args.service, NatsSettings(), args.wait, args.any))
    print(f"{args.service}: {'healthy' if healthy else 'no answer'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
