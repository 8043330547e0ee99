"""Unit tests of the analytics that need no engine: Grafana macros, critical path, stragglers, concurrency."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from swarm.ops.analytics import (
    StepSpan,
    concurrency,
    cut_outputs,
    expand_grafana_macros,
    lower_bound_ms,
    observed_critical_path,
    stragglers,
)

START = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
END = datetime(2025, 6, 1, 13, 0, 0, tzinfo=UTC)


def test_time_macros_expand_like_the_plugin() -> None:
    sql = "SELECT $__timeInterval(at) AS t FROM x WHERE $__timeFilter(at) AND at < $__toTime GROUP BY t / $__interval_s"
    out = expand_grafana_macros(sql, START, END, interval_s=20)
    assert out == (
        "SELECT toStartOfInterval(toDateTime(at), INTERVAL 20 second) AS t FROM x WHERE "
        "at >= toDateTime(1748779200) AND at <= toDateTime(1748782800) AND at < toDateTime(1748782800) GROUP BY t / 20"
    )
    ms = expand_grafana_macros("$__timeFilter_ms(at) $__fromTime_ms $__timeInterval_ms(at)", START, END, 2)
    assert ms == (
        "at >= fromUnixTimestamp64Milli(1748779200000) AND at <= fromUnixTimestamp64Milli(1748782800000) "
        "fromUnixTimestamp64Milli(1748779200000) toStartOfInterval(toDateTime64(at, 3), INTERVAL 2000 millisecond)"
    )


def test_variables_and_conditional_all() -> None:
    sql = "WHERE run_id = '${run_id}' AND r = '$run_id' AND $__conditionalAll(model IN (${model:singlequote}), $model)"
    assert expand_grafana_macros(sql, START, END, 1, {"run_id": "r1", "model": "$__all"}) == (
        "WHERE run_id = 'r1' AND r = 'r1' AND 1=1"
    )
    assert expand_grafana_macros(sql, START, END, 1, {"run_id": "r1", "model": "a,b"}).endswith("model IN ('a','b')")


def test_an_unknown_macro_is_an_error() -> None:
    with pytest.raises(ValueError, match="unexpanded"):
        expand_grafana_macros("SELECT $__unknownMacro(x)", START, END)
    with pytest.raises(ValueError, match="unexpanded"):
        expand_grafana_macros("SELECT '${missing}'", START, END)


def span(step_id: str, start: float, end: float, deps: tuple[str, ...] = (), agent: str = "a") -> StepSpan:
    return StepSpan(step_id=step_id, agent_id=agent, outcome="succeeded", attempts_count=1, queued_at=start,
                    started_at=start, finished_at=end, run_ms=(end - start) * 1000, queued_ms=0.0,
                    prompt_tokens=1, completion_tokens=1, depends_on=deps)  # fmt: skip


def diamond() -> list[StepSpan]:
    return [
        span("scope", 0.0, 1.0),
        span("fast", 1.0, 2.0, ("scope",)),
        span("slow", 1.0, 5.0, ("scope",)),
        span("reduce", 5.0, 6.0, ("fast", "slow")),
        span("side", 0.0, 0.5),
    ]


def test_critical_path_walks_back_through_the_dependency_that_finished_last() -> None:
    assert observed_critical_path(diamond()) == ["scope", "slow", "reduce"]
    assert observed_critical_path([]) == []


def test_lower_bound_is_the_longest_chain_by_running_time() -> None:
    assert lower_bound_ms(diamond()) == pytest.approx(6000.0)
    assert lower_bound_ms([span("x", 0, 1, ("x",))]) == pytest.approx(1000.0)  # a dependency on itself is ignored
    assert lower_bound_ms([span("y", 0, 2, ("never-ran",))]) == pytest.approx(2000.0)
    assert lower_bound_ms([span("a", 0, 1, ("b",)), span("b", 1, 2, ("a",))]) == 0.0  # a forged cycle: no bound


def test_stragglers_and_concurrency() -> None:
    steps = [span(f"s{i}", 0.0, 0.1) for i in range(5)] + [span("late", 0.0, 0.5)]
    assert [s["step_id"] for s in stragglers(steps)] == ["late"]
    samples = concurrency(diamond(), points=12)
    assert max(n for _, n in samples) == 2 and samples[0] == (0.0, 2)


def test_outputs_are_cut_to_fit_a_report() -> None:
    outputs = {"short": "ok", "long": "x" * 100}
    assert cut_outputs(outputs, max_chars=1000, budget_chars=10_000) == outputs
    assert cut_outputs(outputs, max_chars=40, budget_chars=10_000)["long"] == "x" * 40 + "\n… (60 more characters)"
    many = {f"s{i}": "y" * 2000 for i in range(10)}
    cut = cut_outputs(many, max_chars=5000, budget_chars=10_000)  # 20,000 > 10,000: each gets its share
    assert all(text.startswith("y" * 1000 + "\n…") for text in cut.values())
    tiny = cut_outputs(many, max_chars=5000, budget_chars=100)  # a share is never under MIN_OUTPUT_CHARS
    assert all(text.startswith("y" * 500 + "\n…") for text in tiny.values())
