"""`swarm status` tells alive from dead: an exited child (a zombie) is dead, and a pid is alive only while
it is still the program the stack started (pids are reused). A local cluster's nodes and their URLs; a
single node's picked ports; a cluster's port blocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from swarm.ops.natsserver import cluster_ports
from swarm.ops.stack import Stack, StackError, _alive
from swarm.settings import StackSettings


def test_an_exited_child_is_dead_not_a_zombie_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child.pid}/cmdline"):
        if open(f"/proc/{child.pid}/stat").read().split()[2] == "Z":
            break  # exited, not yet reaped: os.kill(pid, 0) would still succeed
        time.sleep(0.05)
    assert not _alive(child.pid)


def test_a_pid_is_alive_only_as_the_program_it_was() -> None:
    me = os.getpid()
    assert _alive(me)
    assert _alive(me, "python")
    assert not _alive(me, "services.worker_pool")  # this pid, had it been reused, is not the worker


def test_a_local_cluster_takes_consecutive_ports_and_gives_services_every_url(tmp_path: Path) -> None:
    settings = StackSettings(home=tmp_path, nats_port=5000, nats_monitor_port=6000, nats_cluster_port=7000, nats_cluster=3)
    stack = Stack(settings)
    assert stack.node_ports() == [(5000, 6000, 7000), (5001, 6001, 7001), (5002, 6002, 7002)]
    assert stack.nats_url == "nats://127.0.0.1:5000,nats://127.0.0.1:5001,nats://127.0.0.1:5002"
    assert Stack(StackSettings(home=tmp_path, nats_port=5000)).nats_url == "nats://127.0.0.1:5000"


def test_a_single_nodes_url_is_known_once_its_server_picked_the_port_and_a_cluster_needs_its_ports_set(
    tmp_path: Path,
) -> None:
    picked = Stack(StackSettings(home=tmp_path, nats_port=0, nats_monitor_port=0))
    with pytest.raises(StackError, match="picked by its server as it starts"):
        _ = picked.nats_url  # nothing runs: no port yet (e2e stacks start this way and read the URL back)
    with pytest.raises(ValidationError, match="a NATS cluster needs its ports set"):
        StackSettings(home=tmp_path, nats_port=0, nats_cluster=3)


def test_a_local_clusters_ports_are_free_disjoint_and_outside_the_ephemeral_range() -> None:
    # Outgoing connections take their local ports from the ephemeral range: a port picked below it stays
    # free until the node binds it, and the client, monitoring and route ports of three nodes never overlap.
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        client, monitor, route = cluster_ports(3)
        ports = [first + i for first in (client, monitor, route) for i in range(3)]
        assert len(set(ports)) == 9 and max(ports) < ephemeral_low
        for port in ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))  # free now
