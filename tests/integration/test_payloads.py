"""Large payloads through a real nats-server: inline in KV when small, by reference to the object store when not."""

from __future__ import annotations

import pytest
from nats.js.errors import DigestMismatchError, NotFoundError

from swarm import payloads
from swarm.bus import Bus
from swarm.contracts import OUTPUTS_BUCKET, PAYLOADS_STORE
from swarm.payloads import Payloads, is_ref, make_ref, read_object

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


async def test_an_object_is_read_whole_by_direct_gets_and_a_changed_chunk_is_refused(bus: Bus) -> None:
    """`read_object` reads the chunks itself (nats-py's get stalls); it must give the same bytes and check them."""
    objects = await bus.js.object_store(PAYLOADS_STORE.name)
    await objects.put("read-whole", THREE_MB)
    await objects.put("read-empty", b"")
    info = await objects.get_info("read-whole")
    assert (info.chunks or 0) > 3  # several chunks, each the next message on the object's subject
    assert await read_object(bus.js, PAYLOADS_STORE.name, "read-whole") == THREE_MB
    assert await read_object(bus.js, PAYLOADS_STORE.name, "read-empty") == b""

    # One chunk replaced behind the meta's back (deleted, and a forged one appended on the same subject).
    stream = f"OBJ_{PAYLOADS_STORE.name}"
    subject = f"$O.{PAYLOADS_STORE.name}.C.{info.nuid}"
    second = await bus.js.get_msg(stream, seq=1, subject=subject, next=True, direct=True)
    second = await bus.js.get_msg(stream, seq=(second.seq or 0) + 1, subject=subject, next=True, direct=True)
    await bus.js.delete_msg(stream, second.seq or 0)
    await bus.js.publish(subject, b"forged" * (len(second.data or b"") // 6))
    with pytest.raises(DigestMismatchError):
        await read_object(bus.js, PAYLOADS_STORE.name, "read-whole")

    await objects.delete("read-empty")
    with pytest.raises(NotFoundError):
        await read_object(bus.js, PAYLOADS_STORE.name, "read-empty")
    with pytest.raises(NotFoundError):
        await read_object(bus.js, PAYLOADS_STORE.name, "never-written")
