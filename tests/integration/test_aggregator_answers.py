"""The aggregator's final answer: loops and answers short of the bar are sampled again; the best is kept.

A stand-in gateway on the real inference subject (real nats-server) answers from a script, since a real
model cannot be made to loop on demand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from services.aggregator.settings import AggregatorSettings
from services.aggregator.synthesis import Aggregator, SynthesisFailed
from swarm.bus import Bus
from swarm.contracts import GATEWAY_QUEUE_GROUP, InferenceRequest, InferenceResponse, Subjects
from swarm.settings import NatsSettings

pytestmark = pytest.mark.integration

GOAL = "Compare solar, wind and hydro power in Germany, Spain and Norway"
LOOP = "Germany has the largest solar market. " * 20
GOOD = (
    "Germany gets much of its power from wind farms in the north and from solar panels on roofs. Spain has the "
    "strongest sun of the three, so its solar plants yield the most, and wind is its second source. Norway "
    "draws nearly all of its electricity from hydro dams in its valleys and sells the surplus to neighbours."
)
NARROW = GOOD.replace("Norway draws", "The third country draws")  # prose, but silent on Norway


@pytest.fixture
async def script(bus: Bus) -> AsyncIterator[tuple[list[InferenceRequest], list[str]]]:
    """(requests seen, replies in order; the last one repeats) of a stand-in gateway."""
    requests: list[InferenceRequest] = []
    replies: list[str] = []

    async def on_request(msg: Msg) -> None:
        request = InferenceRequest.model_validate_json(msg.data)
        requests.append(request)
        content = replies[min(len(requests), len(replies)) - 1]
        response = InferenceResponse(request_id=request.request_id, ok=True, content=content, completion_tokens=9)
        await msg.respond(response.model_dump_json().encode())

    sub = await bus.nc.subscribe(Subjects.INFER, queue=GATEWAY_QUEUE_GROUP, cb=on_request)
    yield requests, replies
    await sub.unsubscribe()


def aggregator(bus: Bus, nats_settings: NatsSettings) -> Aggregator:
    return Aggregator(bus, AggregatorSettings(nats=nats_settings, resample_max=2))


async def test_a_lone_output_that_meets_the_bar_is_the_answer_as_it_stands(
    bus: Bus, nats_settings: NatsSettings, script: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, _ = script
    synthesis = await aggregator(bus, nats_settings).synthesize("r1", GOAL, [GOOD])
    assert synthesis.answer == GOOD and requests == [] and synthesis.completion_tokens == 0


async def test_loops_are_sampled_again_until_an_answer_meets_the_bar(
    bus: Bus, nats_settings: NatsSettings, script: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, replies = script
    replies += [LOOP, NARROW, GOOD]
    synthesis = await aggregator(bus, nats_settings).synthesize("r2", GOAL, [LOOP, NARROW])
    assert synthesis.answer == GOOD and synthesis.completion_tokens == 27
    assert len({r.seed for r in requests}) == 3 and [r.temperature for r in requests] == sorted(
        r.temperature for r in requests
    )
    assert "Cover each of: solar, wind, hydro, power, germany, spain, norway." in requests[0].messages[-1].content


async def test_when_no_sample_meets_the_bar_the_best_non_loop_is_kept(
    bus: Bus, nats_settings: NatsSettings, script: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, replies = script
    replies += [LOOP, "Solar and wind.", NARROW]
    synthesis = await aggregator(bus, nats_settings).synthesize("r3", GOAL, [LOOP])
    assert synthesis.answer == NARROW and len(requests) == 3  # names more of the goal than the short one


async def test_a_run_whose_every_sample_loops_fails_with_the_reason(
    bus: Bus, nats_settings: NatsSettings, script: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, replies = script
    replies.append(LOOP)
    with pytest.raises(SynthesisFailed, match=r"every sample was degenerate.*a loop"):
        await aggregator(bus, nats_settings).synthesize("r4", GOAL, [LOOP])
    assert len(requests) == 3


async def test_a_rewrite_must_beat_its_lone_input_to_replace_it(
    bus: Bus, nats_settings: NatsSettings, script: tuple[list[InferenceRequest], list[str]]
) -> None:
    requests, replies = script
    replies.append("Solar and wind are renewable.")
    synthesis = await aggregator(bus, nats_settings).synthesize("r5", GOAL, [NARROW])
    assert synthesis.answer == NARROW and len(requests) == 3 and synthesis.completion_tokens == 27
