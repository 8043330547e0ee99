"""Fixtures: a real nats-server with JetStream on a free port, and a connected Bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from swarm.bus import Bus
from swarm.natsserver import NatsServer
from swarm.settings import NatsSettings


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server -js with its own store directory, stopped after the test."""
    server = NatsServer(store_dir=tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
def nats_settings(nats_server: NatsServer) -> NatsSettings:
    return NatsSettings(url=nats_server.url)


@pytest.fixture
async def bus(nats_settings: NatsSettings) -> AsyncIterator[Bus]:
    """A connected Bus with every stream and bucket provisioned."""
    connected = await Bus.connect(nats_settings, "test")
    await connected.provision()
    yield connected
    await connected.close()
