"""Large payloads through a real nats-server: inline in KV when small, by reference to the object store when not."""

from __future__ import annotations

import pytest

from swarm import payloads
from swarm.bus import Bus
from swarm.contracts import OUTPUTS_BUCKET
from swarm.payloads import Payloads, is_ref, make_ref

pytestmark = pytest.mark.integration

THREE_MB = (b"0123456789abcdef" * 65536) * 3  # 3 MiB, over NATS' 1 MiB max_payload


async def test_a_3_mb_output_goes_by_reference_and_comes_back_whole(bus: Bus) -> None:
    store = Payloads(bus)
    assert await store.put("run-p.big", THREE_MB) is True
    kv = await bus.kv(OUTPUTS_BUCKET)
    marker = (await kv.get("run-p.big")).value or b""
    assert is_ref(marker) and len(marker) < 200
    assert await store.get("run-p.big") == THREE_MB
    assert await payloads.resolve(bus, marker) == THREE_MB  # what the aggregator does with a KV value


async def test_small_outputs_stay_inline(bus: Bus) -> None:
    store = Payloads(bus)
    assert await store.put("run-p.small", b"short answer") is False
    kv = await bus.kv(OUTPUTS_BUCKET)
    assert (await kv.get("run-p.small")).value == b"short answer"
    assert await store.get("run-p.small") == b"short answer"
    assert await store.get("run-p.absent") is None


async def test_the_threshold_is_a_parameter_and_a_value_can_shrink_again(bus: Bus) -> None:
    store = Payloads(bus, inline_limit=1024)
    assert await store.put("run-p.mid", b"x" * 2000) is True
    assert await store.get("run-p.mid") == b"x" * 2000
    assert await store.put("run-p.mid", b"retry output") is False  # a retried step's smaller output
    assert await store.get("run-p.mid") == b"retry output"


async def test_a_value_that_looks_like_a_marker_is_stored_by_reference(bus: Bus) -> None:
    lookalike = make_ref("swarm_payloads", "someone-else", 1)
    store = Payloads(bus)
    assert await store.put("run-p.tricky", lookalike) is True
    assert await store.get("run-p.tricky") == lookalike
