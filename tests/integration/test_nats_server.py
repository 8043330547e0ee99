"""The project's nats-server process: it listens where nothing can have taken the port from it."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from swarm.ops.natsserver import NatsServer

pytestmark = pytest.mark.integration


async def test_a_server_listens_on_ports_nothing_took_between_choosing_and_listening(tmp_path: Path) -> None:
    # CI saw "nats-server exited with 1": a port chosen free before the server started was taken (by another
    # process, or an outgoing connection's local port) before the server listened on it.
    server = NatsServer(store_dir=tmp_path / "nats", log_file=tmp_path / "nats.log")
    squatters = []
    for chosen in (server.port, server.monitor_port):
        if chosen:  # a port picked before the start: another process takes it in the meantime
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", chosen))
            squatter.listen()
            squatters.append(squatter)
    try:
        server.start()
        ports = (server.port, server.monitor_port)  # start() waited for /healthz on the monitoring port
        assert all(ports)
        nc = await nats.connect(server.url)
        await nc.close()
        server.stop()
        server.start()  # a restart keeps its ports: clients reconnect to the same URL
        assert (server.port, server.monitor_port) == ports
    finally:
        server.stop()
        for squatter in squatters:
            squatter.close()
