"""Whisper's text side (``polydub.serving.whisper_text``): the detokenizer against transformers'
WhisperTokenizer on the tiny export's tokenizer, and segments cut at timestamp tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from polydub.serving import whisper_text

pytestmark = pytest.mark.unit


def test_detokenizer_matches_whisper_tokenizer(
    tiny_whisper: tuple[Any, Any, Any], tmp_path: Path
) -> None:
    _, tokenizer, facts = tiny_whisper
    detok = whisper_text.Detokenizer.load(tokenizer.name_or_path, facts.eot)
    texts = [" hello world", " olá mundo, ciao!", "日本語 ♪ 🎵", " x"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert detok.decode(ids) == text == tokenizer.decode(ids)
    # Specials and timestamps mixed in are dropped, as transformers does.
    ids = [facts.timestamp_begin + 3, *tokenizer.encode(" hello", add_special_tokens=False)]
    ids += [facts.timestamp_begin + 50, facts.eot]
    assert detok.decode(ids) == " hello" == tokenizer.decode(ids, skip_special_tokens=True)


def _facts_for_segments() -> Any:
    return whisper_text.WhisperFacts(
        checkpoint="t",
        n_mels=80,
        decoder_layers=1,
        decoder_heads=1,
        head_dim=1,
        vocab_size=2000,
        max_target_positions=448,
        eot=100,
        sot=101,
        translate=102,
        transcribe=103,
        no_speech=104,
        no_timestamps=105,
        timestamp_begin=106,
        languages={"en": 107},
        suppress_tokens=(),
        begin_suppress_tokens=(),
    )


def test_build_segments_from_timestamp_pairs() -> None:
    facts = _facts_for_segments()
    detok = whisper_text.Detokenizer({chr(ord("a") + i): i for i in range(26)}, facts.eot)
    tb = facts.timestamp_begin
    # <|0.00|> ab <|1.50|><|1.50|> c <|3.00|> d   (last one left open: ends at the duration)
    tokens = [tb, 0, 1, tb + 75, tb + 75, 2, tb + 150, 3]
    logprobs = [-1.0, -2.0, -3.0, -4.0, -0.5, -0.5, -0.5, -2.0]
    segments = whisper_text.build_segments(tokens, logprobs, facts, detok, duration=4.2)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.0, 1.5, "ab"),
        (1.5, 3.0, "c"),
        (3.0, 4.2, "d"),
    ]
    assert segments[0].tokens == (tb, 0, 1, tb + 75)
    assert segments[0].avg_logprob == pytest.approx(-2.5)
    assert segments[2].tokens == (3,)
    # No timestamps at all: one segment over the window; times clamp to the duration.
    plain = whisper_text.build_segments([0, 1], [-1.0, -1.0], facts, detok, duration=2.0)
    assert [(s.start, s.end, s.text) for s in plain] == [(0.0, 2.0, "ab")]
    late = whisper_text.build_segments(
        [tb + 100, 4, tb + 200], [0.0] * 3, facts, detok, duration=2.5
    )
    assert [(s.start, s.end, s.text) for s in late] == [(2.0, 2.5, "e")]
    assert whisper_text.build_segments([], [], facts, detok, duration=1.0) == []
