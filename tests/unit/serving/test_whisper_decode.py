"""Whisper's decoding (``polydub.serving.whisper_decode``) on the tiny export: logit rules against
transformers' processors, the greedy loop against transformers' generate, batching, compaction
and per-row bounds, and the request checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.spec import ExportReport
from polydub.export.whisper_reference import OrtWhisper, check_audio, hf_greedy_tokens
from polydub.serving import whisper_decode, whisper_features

pytestmark = pytest.mark.unit


def test_logit_rules_match_transformers_processors(tiny_whisper: tuple[Any, Any, Any]) -> None:
    import copy

    import torch
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    model, _, facts = tiny_whisper
    generation = copy.deepcopy(model.generation_config)
    tb, prompt = facts.timestamp_begin, [facts.sot, facts.languages["en"], facts.transcribe]
    rng = np.random.default_rng(5)
    histories: list[list[int]] = [
        [],
        [tb + 10],
        [tb + 10, 50],
        [tb + 10, 50, 60, tb + 40],
        [tb + 10, 50, tb + 40, tb + 40],
        [tb + 10, 50, tb + 40, tb + 40, 70],
        [tb + 1500, 80, tb + 1500],
        [tb, 30, 31, 32],
    ]
    checked = 0
    for scale in (0.5, 5.0):  # flat and peaked distributions: both branches of the ts rule
        for history in histories:
            logits = (scale * rng.standard_normal((1, facts.vocab_size))).astype(np.float32)
            logits[0, tb + 20] += 8.0 * (scale > 1)  # make timestamps win sometimes
            ids = torch.tensor([prompt + history])
            scores = torch.from_numpy(logits.copy())
            for processor in (
                SuppressTokensAtBeginLogitsProcessor(generation.begin_suppress_tokens, 3),
                SuppressTokensLogitsProcessor(generation.suppress_tokens),
                WhisperTimeStampLogitsProcessor(generation, begin_index=3),
            ):
                scores = processor(ids, scores)
            ours = whisper_decode.apply_logit_rules(logits, [history], facts, first=not history)
            np.testing.assert_array_equal(ours, scores.numpy())
            assert int(np.argmax(ours)) == int(scores.argmax())
            checked += 1
    assert checked == 16


def test_onnx_greedy_loop_equals_transformers(
    whisper_export: tuple[Path, ExportReport], tiny_whisper: tuple[Any, Any, Any]
) -> None:
    repository, _ = whisper_export
    model, _, facts = tiny_whisper
    fp32 = OrtWhisper.from_repository(repository, "_fp32")
    audio = check_audio()
    features = whisper_features.log_mel_spectrogram(audio, facts.n_mels)
    for language, task in (("de", "translate"), (None, "transcribe")):
        ours = fp32.decode(audio, [whisper_decode.DecodeOptions(language, task)] * len(audio), 24)
        theirs = hf_greedy_tokens(model, features, language, task, 24, list(facts.languages))
        assert [r.tokens for r in ours] == theirs
        assert all(len(t) == 24 for t in theirs)  # the random model never says eot
        assert all(t[0] >= facts.timestamp_begin for t in theirs)  # rule: timestamp first
    # Detection restricted to fewer languages (a real checkpoint knows 99; polydub serves 27).
    pair = {"de": facts.languages["de"], "ko": facts.languages["ko"]}
    narrow = dataclasses.replace(facts, languages=pair)
    ours = whisper_decode.greedy_decode(
        fp32, features, [whisper_decode.DecodeOptions(None)] * 3, narrow, 12
    )
    theirs = hf_greedy_tokens(model, features, None, "transcribe", 12, list(pair))
    assert [r.tokens for r in ours] == theirs and {r.language for r in ours} <= set(pair)


def test_batched_loop_with_compaction_equals_one_by_one(
    whisper_export: tuple[Path, ExportReport], tiny_whisper: tuple[Any, Any, Any]
) -> None:
    """Rows of one batch that stop early (max tokens reached via a detect-only row, eot forced)
    leave the others' tokens unchanged."""
    repository, _ = whisper_export
    _, _, facts = tiny_whisper
    fp32 = OrtWhisper.from_repository(repository, "_fp32")
    audio = check_audio()
    options = [
        whisper_decode.DecodeOptions("en"),
        whisper_decode.DecodeOptions(None, "detect"),
        whisper_decode.DecodeOptions(None),
    ]
    batched = fp32.decode(audio, options, 16)
    for clip, opt, result in zip(audio, options, batched, strict=True):
        [alone] = fp32.decode([clip], [opt], 16)
        assert result.tokens == alone.tokens
        assert result.language == alone.language
        assert result.no_speech_prob == pytest.approx(alone.no_speech_prob, abs=1e-6)
    assert batched[1].tokens == [] and batched[1].language in facts.languages

    class EotAfter:
        """Wraps the backend: row 0's logits say eot from the 4th step on."""

        def __init__(self, inner: OrtWhisper) -> None:
            self.inner, self.steps = inner, 0
            self.rows_seen: list[int] = []

        def encode(self, features: NDArray[Any]) -> Any:
            return self.inner.encode(features)

        def step(self, ids: NDArray[Any], past: Any, cross: Any) -> Any:
            logits, present = self.inner.step(ids, past, cross)
            self.steps += 1
            self.rows_seen.append(ids.shape[0])
            if self.steps >= 4 and ids.shape[0] == 3:
                logits[0, facts.eot] = 1e4
            return logits, present

        def select(self, state: Any, rows: NDArray[Any]) -> Any:
            return self.inner.select(state, rows)

    wrapped = EotAfter(fp32)
    feats = whisper_features.log_mel_spectrogram(audio, facts.n_mels)
    three = [whisper_decode.DecodeOptions("en")] * 3
    results = whisper_decode.greedy_decode(wrapped, feats, three, facts, 12, compact_below=0.7)
    assert len(results[0].tokens) == 2  # eot at the 3rd sampled token
    assert [len(r.tokens) for r in results[1:]] == [12, 12]
    assert 2 in wrapped.rows_seen  # compacted from 3 rows to 2
    plain = fp32.decode(audio, three, 12)
    assert [r.tokens for r in results[1:]] == [r.tokens for r in plain[1:]]
    # One bound per row: a row with 0 only gets its language, the others stop at their own.
    bounded = whisper_decode.greedy_decode(fp32, feats, three, facts, [3, 0, 12])
    assert [len(r.tokens) for r in bounded] == [3, 0, 12]
    assert bounded[0].tokens == plain[0].tokens[:3] and bounded[2].tokens == plain[2].tokens
    assert bounded[1].language == plain[1].language
    # min_new_tokens: eot is masked until a row has that many tokens (transformers' rule).
    forced = whisper_decode.greedy_decode(
        EotAfter(fp32), feats, three, facts, 12, min_new_tokens=[6, 0, 0]
    )
    assert [len(r.tokens) for r in forced] == [6, 12, 12]
    assert forced[0].tokens[:2] == results[0].tokens


def test_unknown_language_or_task_is_rejected(tiny_whisper: tuple[Any, Any, Any]) -> None:
    _, _, facts = tiny_whisper
    with pytest.raises(ValueError, match=r"unsupported language 'xx'; supported: .*en"):
        whisper_decode.validate_options(whisper_decode.DecodeOptions("xx"), facts)
    with pytest.raises(ValueError, match="unknown task"):
        whisper_decode.validate_options(whisper_decode.DecodeOptions("en", "summarize"), facts)
