"""The whisper sessions' memory settings: the encoder run in parts (``encoder_batch``) writes the
same cross-attention K/V as one run over the whole batch, and the decoding on them gives the same
tokens; the service reads its memory parameters from the model config, and a batch decoded in
groups (``cross_cache_mib``) answers as the whole batch at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.spec import ExportReport
from polydub.export.whisper_graphs import BLS_MODEL
from polydub.serving.batch import strings
from polydub.serving.names import WhisperIn, WhisperOut
from polydub.serving.whisper_decode import DecodeOptions, greedy_decode
from polydub.serving.whisper_features import log_mel_spectrogram
from polydub.serving.whisper_ort import OrtGraphs
from polydub.serving.whisper_service import (
    PARAMETERS,
    TOKENIZER_DIR,
    WhisperService,
    group_size,
)
from polydub.serving.whisper_text import FACTS_FILE, WhisperFacts

pytestmark = pytest.mark.unit


def _graphs(repository: Path, **memory: bool | int) -> OrtGraphs:
    version = repository / BLS_MODEL / "1"
    facts = WhisperFacts.load(version / TOKENIZER_DIR / FACTS_FILE)
    return OrtGraphs(
        version / PARAMETERS["encoder_file"],
        version / PARAMETERS["decoder_file"],
        facts,
        threads=1,
        **memory,  # type: ignore[arg-type]
    )


def test_encoding_in_parts_equals_one_run(whisper_export: tuple[Path, ExportReport]) -> None:
    repository, _ = whisper_export
    rng = np.random.default_rng(0)
    audios = [rng.normal(0, 0.1, 16000 * s).astype(np.float32) for s in (1, 3, 5, 2, 4)]
    whole = _graphs(repository, encoder_batch=16, encoder_arena=True)
    parts = _graphs(repository, encoder_batch=2)
    features = log_mel_spectrogram(audios, whole.facts.n_mels)
    # the OrtValues stay referenced: ``numpy()`` views memory they own
    whole_values, part_values = whole.encode(features), parts.encode(features)
    expected = [v.numpy() for v in whole_values]
    got = [v.numpy() for v in part_values]
    assert len(got) == len(expected) == whole.facts.decoder_layers * 2
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.shape[0] == len(audios)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    options = [DecodeOptions("en")] * len(audios)
    tokens = [r.tokens for r in greedy_decode(parts, features, options, parts.facts, 12)]
    assert tokens == [r.tokens for r in greedy_decode(whole, features, options, whole.facts, 12)]


def test_the_service_reads_its_memory_parameters(
    whisper_export: tuple[Path, ExportReport],
) -> None:
    repository, _ = whisper_export
    version = repository / BLS_MODEL / "1"
    service = WhisperService(version, {**PARAMETERS, "encoder_batch": "3"})
    assert service.backend.encoder_batch == 3
    with pytest.raises(ValueError, match="true or false"):
        WhisperService(version, {**PARAMETERS, "encoder_cpu_arena": "maybe"})


def test_the_cross_cache_bound_sets_the_windows_decoded_together(
    whisper_export: tuple[Path, ExportReport],
) -> None:
    tiny = _graphs(whisper_export[0]).facts
    base = dataclasses.replace(tiny, decoder_layers=6, decoder_heads=8, head_dim=64)
    large = dataclasses.replace(tiny, decoder_layers=32, decoder_heads=20, head_dim=64)
    assert group_size(base, 2048) == 58  # 37 MB a window: a batch of 16 is never split
    assert group_size(large, 2048) == 4  # 491 MB a window
    assert group_size(large, 100) == 1  # at least one window
    assert group_size(large, 0) >= 2**31 - 1
    with pytest.raises(ValueError, match=">= 0"):
        group_size(large, -1)


def test_a_batch_decoded_in_groups_answers_as_one(
    whisper_export: tuple[Path, ExportReport],
) -> None:
    repository, _ = whisper_export
    version = repository / BLS_MODEL / "1"
    whole = WhisperService(version, PARAMETERS)
    grouped = WhisperService(version, {**PARAMETERS, "cross_cache_mib": "1"})
    assert grouped.group_size < 3 < whole.group_size  # a window of the tiny export: ~0.8 MB
    rng = np.random.default_rng(1)
    requests: list[dict[str, NDArray[Any]]] = [
        {
            WhisperIn.AUDIO: rng.normal(0, 0.1, (rows, 16000 * seconds)).astype(np.float32),
            WhisperIn.LANGUAGE: np.array([[b"en"]], dtype=np.object_),
            WhisperIn.TASK: np.array([[b"transcribe"]], dtype=np.object_),
            WhisperIn.MAX_NEW_TOKENS: np.array([[limit]], dtype=np.int32),
        }
        for rows, seconds, limit in ((1, 2, 10), (2, 3, 6), (1, 1, 12), (3, 2, 8))
    ]
    expected, got = whole.run(requests), grouped.run(requests)
    for a, b in zip(expected, got, strict=True):
        assert isinstance(a, dict) and isinstance(b, dict)
        np.testing.assert_array_equal(a[WhisperOut.TOKENS], b[WhisperOut.TOKENS])
        assert strings(a[WhisperOut.TEXT]) == strings(b[WhisperOut.TEXT])
