"""Degenerate text: loops and empty outputs are caught, ordinary prose (and the sim's text) is not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.backends.sim import plausible_text
from swarm.repetition import (
    _WORD_RE,
    ANSWER_LIMITS,
    STEP_LIMITS,
    degeneracy,
    missing_topics,
    ngram_counts,
    repeated_share,
    topic_words,
    words,
)

PROSE = (
    "Germany relies on wind power in the north and on solar panels across its southern states. Spain has the "
    "strongest sunshine of the three countries, so solar farms in Andalusia produce far more per panel, while "
    "its hydro capacity is limited by dry summers. Norway generates almost all of its electricity from hydro "
    "dams in steep valleys and exports the surplus; its wind farms are growing along the coast."
)


@pytest.mark.parametrize(
    "text",
    [
        "2020-2022: " * 60,  # the loop issue 12 reported
        "Solar power is cheap. " * 12,
        "The answer is " + "wind and hydro and " * 20,
    ],
)
def test_loops_are_degenerate(text: str) -> None:
    reason = degeneracy(text)
    assert reason is not None and reason.startswith("a loop")


@pytest.mark.parametrize("text", ["", "   \n\t", "... --- !!!", "**\n\n---"])
def test_text_without_words_is_empty_of_content(text: str) -> None:
    reason = degeneracy(text)
    assert reason is not None and "empty of content" in reason


def test_prose_passes_both_bars() -> None:
    assert degeneracy(PROSE) is None
    assert degeneracy(PROSE, ANSWER_LIMITS) is None


def test_the_answer_bar_allows_a_phrase_twice_not_three_times() -> None:
    twice = PROSE + " In short, solar wind and hydro each fit a country. Solar wind and hydro differ in cost."
    assert max(ngram_counts(twice).values()) == 2 and degeneracy(twice, ANSWER_LIMITS) is None
    thrice = twice + " Overall solar wind and hydro complement each other."
    reason = degeneracy(thrice, ANSWER_LIMITS)
    assert reason is not None and "'solar wind and hydro' occurs 3 times" in reason
    assert degeneracy(thrice, STEP_LIMITS) is None  # a step's output is only rejected when dominated by loops


def test_a_short_answer_fails_only_the_answer_bar() -> None:
    assert degeneracy("42", STEP_LIMITS) is None  # a number is an answer to some steps
    assert degeneracy("Norway uses hydro.", STEP_LIMITS) is None
    reason = degeneracy("Norway uses hydro.", ANSWER_LIMITS)
    assert reason is not None and "too short" in reason and "3 words" in reason


def test_words_and_shares() -> None:
    assert words("Norway's wind-power, 2024!") == ["norway's", "wind-power", "2024"]
    assert repeated_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_share("too short") == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_the_sim_backends_text_is_never_a_loop(seed: int) -> None:
    # Load tests run thousands of sim steps: a false alarm there would resample every step.
    text = plausible_text("Compare solar, wind and hydro power in Germany, Spain and Norway.", 300, seed)
    assert degeneracy(text) is None


def test_a_numbered_loop_is_caught_by_the_share_of_its_phrase() -> None:
    text = "1. The 2008 financial crisis: 2. The 2008 financial crisis: 3. The 2008 financial crisis: 4. The 200"
    assert repeated_share(text) < STEP_LIMITS.max_repeated_fraction  # the numbers make most 4-grams distinct
    reason = degeneracy(text)
    assert reason is not None and "'the 2008 financial crisis' occurs 3 times" in reason


def test_topic_words_skip_asking_words_and_missing_topics_match_by_stem() -> None:
    topics = topic_words("Compare solar, wind and hydro power in Germany, Spain and Norway")
    assert topics == ["solar", "wind", "hydro", "power", "germany", "spain", "norway"]
    text = "Norwegian hydropower and German wind power, with solar in Spain."
    assert missing_topics(text, topics) == []
    assert missing_topics("Wind power in Spain.", topics) == ["solar", "hydro", "germany", "norway"]


def test_the_sim_backends_text_is_no_loop_even_when_the_prompt_repeats_one_word() -> None:
    text = plausible_text("0123456789abcdef" * 500, 2000, 1)
    assert degeneracy(text) is None


_WORDISH = st.text(alphabet=st.sampled_from([*"aZ9_'- .,\n\t", "\u2019", "\u00e9", "\u00c9", "\u0130", "\u00df"]), max_size=60)


@settings(max_examples=3000, deadline=None)
@given(_WORDISH)
def test_words_split_ascii_text_as_the_word_pattern_does(text: str) -> None:
    # The ASCII fast path (translate and split) must agree with the pattern it stands in for, on every input.
    assert words(text) == _WORD_RE.findall(text.lower())


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["wind", "solar", "hydro", "grid", "cost", "2020-2022", "norway's"]), max_size=40))
def test_degeneracy_is_decided_as_by_the_counts_of_every_sequence(tokens: list[str]) -> None:
    # The early exit (no sequence occurs twice) must never hide a loop that the full count finds.
    text = " ".join(tokens)
    counts = ngram_counts(text)
    top = max(counts.values(), default=0)
    if top <= 1:
        assert degeneracy(text) is None or degeneracy(text).startswith("an output empty")
    for limits in (STEP_LIMITS, ANSWER_LIMITS):
        reason = degeneracy(text, limits)
        expected_loop = counts and (
            repeated_share(text) > limits.max_repeated_fraction
            or (top >= 3 and top * limits.n / len(words(text)) > limits.max_top_coverage)
            or (limits.max_ngram_count and top > limits.max_ngram_count)
        )
        assert (reason is not None and reason.startswith("a loop")) == bool(expected_loop and len(words(text)) >= limits.min_words)
