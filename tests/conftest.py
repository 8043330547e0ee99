"""Fixtures: a real nats-server with JetStream on a free port, a connected Bus, and the FAKE tensorrt_llm."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import pytest

from services.recorder.runindex import RunIndexer
from services.recorder.settings import RecorderSettings
from swarm.bus import Bus
from swarm.ops.natsserver import NatsServer, cluster_ports, cluster_servers, local_nodes, start_cluster
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
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three nats-server nodes in one JetStream cluster on loopback (the configuration `swarm up
    --nats-cluster 3` and compose run), stopped after the test."""
    ports = cluster_ports(3)  # client, monitoring, route ports: node i uses first + i
    nodes = local_nodes(tmp_path / "nats", [(ports[0] + i, ports[1] + i, ports[2] + i) for i in range(3)])
    servers = start_cluster(cluster_servers(tmp_path / "nats", nodes, log_dir=tmp_path))
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
async def bus(nats_settings: NatsSettings) -> AsyncIterator[Bus]:
    """A connected Bus with every stream and bucket provisioned."""
    connected = await Bus.connect(nats_settings, "test")
    await connected.provision()
    yield connected
    await connected.close()


@asynccontextmanager
async def indexing(bus: Bus) -> AsyncIterator[RunIndexer]:
    """The run index's one writer (the recorder's RUNS consumer, here without ClickHouse), running in the block."""
    indexer = RunIndexer(bus, RecorderSettings(nats=bus.settings, fetch_timeout_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop))
    try:
        yield indexer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def run_index(bus: Bus) -> AsyncIterator[RunIndexer]:
    """The run index's writer, running for the test."""
    async with indexing(bus) as indexer:
        yield indexer


FAKES = Path(__file__).resolve().parent / "fakes"


@pytest.fixture
def fake_trtllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """FAKE tensorrt_llm (tests/fakes) on sys.path, out of sys.modules afterwards; its CALLS start empty."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)
    import tensorrt_llm

    assert tensorrt_llm.__doc__ and tensorrt_llm.__doc__.startswith("FAKE")
    tensorrt_llm.CALLS.clear()
    yield tensorrt_llm
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def hf_checkpoint(tmp_path: Path) -> Path:
    """A local Hugging Face checkpoint directory as the model-fetch job leaves it (config, tokenizer)."""
    checkpoint = tmp_path / "models" / "checkpoint"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).write_text("{}")
    return checkpoint
