"""Per-hop delays of a run, from its step and inference events (loadtest.hop_delays)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loadtest.hop_delays import hops
from swarm.contracts import InferenceEvent, StepEvent, StepEventKind, step_event_id

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def event(step_id: str, kind: StepEventKind, at_ms: float, depends_on: str = "") -> StepEvent:
    return StepEvent(
        event_id=step_event_id("r1", step_id, 1, kind), run_id="r1", tenant="t", step_id=step_id, attempt=1,
        kind=kind, at=T0 + timedelta(milliseconds=at_ms),
        attributes={"depends_on": depends_on} if kind is StepEventKind.QUEUED else {},
    )  # fmt: skip


def call(step_id: str, at_ms: float, queue_ms: float, duration_ms: float) -> InferenceEvent:
    return InferenceEvent(
        event_id=f"c-{step_id}", run_id="r1", step_id=step_id, caller="worker", model="sim", backend="sim", ok=True,
        queue_ms=queue_ms, duration_ms=duration_ms, at=T0 + timedelta(milliseconds=at_ms),
    )  # fmt: skip


def test_each_hop_of_a_two_step_chain_is_measured_from_its_events() -> None:
    kinds = (StepEventKind.QUEUED, StepEventKind.STARTED, StepEventKind.INFERENCE_DONE, StepEventKind.SUCCEEDED)
    a = [event("a", kind, at) for kind, at in zip(kinds, (0, 5, 215, 222), strict=True)]
    b = [event("b", StepEventKind.QUEUED, 224, depends_on="a")]
    b += [event("b", kind, at) for kind, at in zip(kinds[1:], (230, 340, 349), strict=True)]
    found = hops(a + b, [call("a", 214, queue_ms=1.0, duration_ms=200.0), call("b", 339, 2.0, 100.0)])
    assert found["pickup"] == pytest.approx([5.0, 6.0])
    assert found["inference overhead"] == pytest.approx([9.0, 8.0])  # 210 - 1 - 200, 110 - 2 - 100
    assert found["gateway queue"] == pytest.approx([1.0, 2.0])
    assert found["report"] == pytest.approx([7.0, 9.0])
    assert found["release"] == pytest.approx([2.0])  # a succeeded at 222, b queued at 224; a has no parent


def test_steps_missing_an_event_are_left_out() -> None:
    only_queued = [event("a", StepEventKind.QUEUED, 0)]
    assert hops(only_queued, []) == {}
