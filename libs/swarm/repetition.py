"""Degenerate model output: text empty of content, or dominated by repeated word sequences (a decoding loop);
and which of a goal's topics a text leaves out.

Small models fall into loops ("2020-2022: 2020-2022: ...") that are valid strings to everything else; the
worker, the planner and the aggregator treat such text like a schema error and sample again.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_JOINERS = "'-"  # inside a word they join its parts; elsewhere they separate words
# ASCII text lower-cased with every character that is neither a letter, a digit nor a joiner made a space.
_ASCII_WORD_CHARS = {
    code: char.lower() if char.lower() in string.ascii_lowercase + string.digits + _JOINERS else " "
    for code, char in ((code, chr(code)) for code in range(128))
}
QUOTE_CHARS = 60
MIN_COVERING_COUNT = 3


@dataclass(frozen=True)
class RepetitionLimits:
    """When text counts as degenerate."""

    n: int = 4  # the length of the word sequences compared
    max_repeated_fraction: float = 0.3  # of the n-grams, the share that repeats an earlier one
    max_ngram_count: int = 0  # the most times one n-gram may occur (0: no such limit)
    # The share of the words covered by the most frequent n-gram, once it occurs 3 times: "1. The crisis:
    # 2. The crisis: 3. The crisis: ..." has few repeated n-grams (the numbers differ) but is all one phrase.
    max_top_coverage: float = 0.4
    min_words: int = 1  # fewer words than this is empty of content


STEP_LIMITS = RepetitionLimits()
# The final answer is what a person reads: a phrase three times over already reads as a loop.
ANSWER_LIMITS = RepetitionLimits(max_repeated_fraction=0.15, max_ngram_count=2, min_words=40)


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased (letters and digits; inner apostrophes and hyphens kept)."""
    if not text.isascii():
        return _WORD_RE.findall(text.lower())
    # ASCII (most model output): one translate and one split in C, a third of the regex's time; only the
    # pieces holding a joiner go through the regex, which keeps it where it joins two words.
    spaced = text.translate(_ASCII_WORD_CHARS)
    if "'" not in spaced and "-" not in spaced:
        return spaced.split()
    found: list[str] = []
    for piece in spaced.split():
        if "'" in piece or "-" in piece:
            found += _WORD_RE.findall(piece)
        else:
            found.append(piece)
    return found


def ngram_counts(text: str, n: int = 4) -> Counter[tuple[str, ...]]:
    """How often each sequence of `n` words occurs in `text`."""
    return Counter(_ngrams(words(text), n))


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """Every sequence of `n` consecutive tokens, in order."""
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))  # the shorter tails end it


def repeated_share(text: str, n: int = 4) -> float:
    """The share of `text`'s n-word sequences that repeat an earlier one (0: none repeats)."""
    return _repeated_share(ngram_counts(text, n))


def _repeated_share(counts: Counter[tuple[str, ...]]) -> float:
    total = counts.total()
    return (total - len(counts)) / total if total else 0.0


def _count(item: tuple[tuple[str, ...], int]) -> int:
    return item[1]


def degeneracy(text: str, limits: RepetitionLimits = STEP_LIMITS) -> str | None:
    """Why `text` is degenerate (empty of content, or a loop of repeated word sequences), or None."""
    tokens = words(text)
    if not tokens:
        return "an output empty of content (no words)"
    if len(tokens) < limits.min_words:
        return f"too short an output ({len(tokens)} words, fewer than {limits.min_words})"
    # Words and n-grams counted once (this runs on every model output, on the workers' hot path).
    grams = _ngrams(tokens, limits.n)
    if len(set(grams)) == len(grams):  # the usual case: no sequence occurs twice, so no bar below is crossed
        return None
    counts = Counter(grams)
    top, top_count = max(counts.items(), key=_count)
    quoted = " ".join(top)[:QUOTE_CHARS]
    repeated = _repeated_share(counts)
    if repeated > limits.max_repeated_fraction:
        return (
            f"a loop: {repeated:.0%} of its {limits.n}-word sequences repeat an earlier one "
            f"('{quoted}' {top_count} times)"
        )
    coverage = top_count * limits.n / len(tokens)
    if top_count >= MIN_COVERING_COUNT and coverage > limits.max_top_coverage:
        return f"a loop: the {limits.n}-word sequence '{quoted}' occurs {top_count} times, {coverage:.0%} of its words"
    if limits.max_ngram_count and top_count > limits.max_ngram_count:
        return f"a loop: the {limits.n}-word sequence '{quoted}' occurs {top_count} times"
    return None


# Words that say nothing of a topic: how goals and instructions ask for things.
_NOT_TOPICS = frozenset(
    "compare describe explain list give write find what which when where about between their there these those "
    "that this with from have does into more most each other your should could would".split()
)
TOPIC_MIN_CHARS = 4
STEM_TRIM_CHARS = 2  # "Norway" is named by "Norwegian", "hydro" by "hydropower": compare word stems


def topic_words(text: str) -> list[str]:
    """The words of `text` that say what it is about (four letters or more, no asking words), in order."""
    found = (w for w in words(text) if len(w) >= TOPIC_MIN_CHARS and w.isalpha() and w not in _NOT_TOPICS)
    return list(dict.fromkeys(found))


def missing_topics(text: str, topics: list[str]) -> list[str]:
    """The `topics` that `text` does not name (by stem: a word starting like the topic names it)."""
    present = words(text)
    return [
        t for t in topics
        if not any(w.startswith(t[: max(TOPIC_MIN_CHARS, len(t) - STEM_TRIM_CHARS)]) for w in present)
    ]  # fmt: skip
