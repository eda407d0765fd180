"""Word error rates (``polydub.export.wer``): per pair and pooled over pairs."""

from __future__ import annotations

import pytest

from polydub.export.wer import pooled_word_error_rate, word_error_rate

pytestmark = pytest.mark.unit


def test_word_error_rate() -> None:
    assert word_error_rate("the quick brown fox", "The quick, brown fox!") == 0
    assert word_error_rate("the quick brown fox", "the brown box") == 0.5
    assert word_error_rate("a b", "a b c d") == 1.0


def test_pooled_word_error_rate() -> None:
    pairs = [("one two three four", "one two three for"), ("a b c d e f g h i j k l", "")]
    assert pooled_word_error_rate(pairs) == (1 + 12) / 16
    assert word_error_rate("one two three four", "one two three for") == 0.25
