"""pick_candidate: among a segment's n-best, the translation that fits its time slot best."""

from __future__ import annotations

import pytest

from polydub.orchestrator.candidates import CHARS_PER_SECOND, estimated_seconds, pick_candidate
from polydub.orchestrator.records import ScoredText

pytestmark = pytest.mark.unit


def nbest(*pairs: tuple[str, float]) -> list[ScoredText]:
    return [ScoredText(text, score) for text, score in pairs]


def test_speech_time_is_estimated_from_visible_characters() -> None:
    assert estimated_seconds("  " + "x" * 30 + "\n") == 30 / CHARS_PER_SECOND == 2.0
    assert estimated_seconds("abcdef", chars_per_second=3.0) == 2.0


def test_a_shorter_candidate_close_in_score_wins_a_short_slot() -> None:
    options = nbest(("A much longer translation that will not fit", -0.1), ("Short one", -0.3))
    assert pick_candidate(options, 1.0) == 1
    assert pick_candidate(options, 3.0) == 0  # a slot long enough keeps the best one


def test_a_candidate_clearly_worse_in_score_is_never_bought_for_fit() -> None:
    options = nbest(("A much longer translation that will not fit", -0.1), ("Short one", -0.41))
    assert pick_candidate(options, 1.0) == 0
    assert pick_candidate(options, 1.0, margin=0.5) == 1


def test_running_over_the_slot_costs_twice_as_much_as_ending_early() -> None:
    over = "x" * 36  # 2.4 s in a 2 s slot: 0.4 s over
    under = "x" * 21  # 1.4 s: 0.6 s early
    assert pick_candidate(nbest((over, -0.2), (under, -0.2)), 2.0) == 1
    assert pick_candidate(nbest((over, -0.2), ("x" * 12, -0.2)), 2.0) == 0  # 1.2 s early


def test_empty_candidates_are_never_eligible() -> None:
    assert pick_candidate(nbest(("   ", -0.1), ("Hola", -0.2)), 0.0) == 1
    assert pick_candidate(nbest(("", -0.1), (" ", -0.2)), 1.0) == 0  # nothing worded: the best


def test_equal_fits_keep_the_better_scored_one() -> None:
    assert pick_candidate(nbest(("Hola", -0.2), ("Hola", -0.2), ("Olá!", -0.25)), 0.1) == 0
    assert pick_candidate(nbest(("Hola", -0.2)), 10.0, chars_per_second=1.0) == 0


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        pick_candidate([], 1.0)
