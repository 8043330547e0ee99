"""Workers send results in batches (StepResultBatch): one message per run for what finished while its last
batch was being stored, each result once, each caller back only when its batch is acknowledged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.worker_pool.reporting import batch_json, chunks
from swarm.contracts import (
    INLINE_OUTPUT_MAX_CHARS,
    RESULT_BATCH_MAX_BYTES,
    StepResult,
    StepResultBatch,
    StepStatus,
    results_of,
    utc_now,
)


def result(step_id: str, run_id: str = "run-1", output: str = "an output") -> StepResult:
    now = utc_now()
    return StepResult(run_id=run_id, step_id=step_id, attempt=1, status=StepStatus.SUCCEEDED, output=output,
                      started_at=now, finished_at=now, worker_id="w")  # fmt: skip


def test_a_batch_joined_from_encoded_results_is_the_batch_model_s_json() -> None:
    results = (result("s1"), result("s2", output='quotes " and \\ and ünïcode'))
    joined = batch_json([r.model_dump_json().encode() for r in results])
    assert joined == StepResultBatch(results=results).model_dump_json().encode()
    assert results_of(joined) == results


def test_a_single_result_is_still_accepted_and_malformed_messages_are_refused() -> None:
    one = result("s1")
    assert results_of(one.model_dump_json().encode()) == (one,)
    for malformed in (b'{"v":1,"results":[]}', b'{"v":1,"results":3}', b"[1]", b"not json", b'{"run_id":"r"}'):
        with pytest.raises(ValidationError):
            results_of(malformed)


def test_batches_stay_within_their_budget_and_a_larger_result_goes_alone() -> None:
    big = result("big", output="x" * INLINE_OUTPUT_MAX_CHARS).model_dump_json().encode()
    encoded = [result(f"s{i}").model_dump_json().encode() for i in range(50)] + [big]
    spans = list(chunks(encoded, max_bytes=len(big) + 500))
    assert [i for start, end in spans for i in range(start, end)] == list(range(len(encoded)))  # each once, in order
    assert spans[-1] == (50, 51)
    for start, end in spans[:-1]:
        assert len(batch_json(encoded[start:end])) <= len(big) + 500
    assert len(list(chunks(encoded))) == 1 and len(batch_json(encoded)) < RESULT_BATCH_MAX_BYTES


def test_batches_stay_within_their_count() -> None:
    encoded = [result(f"s{i}").model_dump_json().encode() for i in range(10)]
    assert list(chunks(encoded, max_results=4)) == [(0, 4), (4, 8), (8, 10)]
