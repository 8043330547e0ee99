"""Per-hop delays of a run, from its step and inference events (loadtest.hop_delays)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loadtest.hop_delays import critical_chain, hops
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
    # a: started 5, its call ended 214 after 1 + 200 (engine start 13), done 215; b: 230, 339 - 102, 340
    assert found["to the engine"] == pytest.approx([8.0, 7.0])
    assert found["from the engine"] == pytest.approx([1.0, 1.0])
    assert found["gateway queue"] == pytest.approx([1.0, 2.0])
    assert found["report"] == pytest.approx([7.0, 9.0])
    assert found["release"] == pytest.approx([2.0])  # a succeeded at 222, b queued at 224; a has no parent


def test_steps_missing_an_event_are_left_out() -> None:
    only_queued = [event("a", StepEventKind.QUEUED, 0)]
    assert hops(only_queued, []) == {}


def test_the_critical_chain_follows_the_dependency_that_finished_last() -> None:
    kinds = (StepEventKind.QUEUED, StepEventKind.STARTED, StepEventKind.INFERENCE_DONE, StepEventKind.SUCCEEDED)

    def step(step_id: str, times: tuple[float, float, float, float], depends_on: str = "") -> list[StepEvent]:
        queued = event(step_id, kinds[0], times[0], depends_on)
        return [queued] + [event(step_id, kind, at) for kind, at in zip(kinds[1:], times[1:], strict=True)]

    events = step("a", (0, 2, 100, 103)) + step("b", (0, 3, 300, 310))  # b finishes last of the two roots
    events += step("c", (311, 315, 415, 420), depends_on="a,b")
    calls = [call("a", 99, 0.0, 95.0), call("b", 299, 1.0, 290.0), call("c", 414, 0.5, 97.0)]
    chain = critical_chain(events, calls)
    assert [h["engine"] for h in chain] == [290.0, 97.0]  # b then c: a is off the chain
    assert chain[0]["release"] == 0.0 and chain[1]["release"] == pytest.approx(1.0)  # b succeeded 310, c queued 311
    assert chain[1]["pickup"] == pytest.approx(4.0) and chain[1]["report"] == pytest.approx(5.0)
    assert chain[1]["inference overhead"] == pytest.approx(100.0 - 97.0 - 0.5)
    assert chain[1]["to the engine"] == pytest.approx(1.5)  # c started 315, its engine at 414 - 97 - 0.5
    assert chain[1]["from the engine"] == pytest.approx(1.0)  # the call ended 414, inference done 415
    assert critical_chain([], []) == []
