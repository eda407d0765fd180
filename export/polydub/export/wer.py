"""Word error rate: the export's int8 acceptance check, the tests and the benchmarks share it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any


def words(text: str) -> list[str]:
    """Lower-case words; punctuation (but not apostrophes) is a separator."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Levenshtein distance between two sequences (words, token ids)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    return edit_distance(words(reference), words(hypothesis))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors over the reference length (case and punctuation ignored)."""
    return word_errors(reference, hypothesis) / max(len(words(reference)), 1)


def pooled_word_error_rate(pairs: Iterable[tuple[str, str]]) -> float:
    """All (reference, hypothesis) pairs' errors over all their reference words: short clips
    weigh by their length, so one word of a five-word clip is not a 20 % failure."""
    errors = total = 0
    for reference, hypothesis in pairs:
        errors += word_errors(reference, hypothesis)
        total += len(words(reference))
    return errors / max(total, 1)
