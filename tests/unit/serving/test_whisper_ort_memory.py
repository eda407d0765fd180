"""The whisper sessions' memory settings: the encoder run in parts (``encoder_batch``) writes the
same cross-attention K/V as one run over the whole batch, and the decoding on them gives the same
tokens; the service reads its memory parameters from the model config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polydub.export.spec import ExportReport
from polydub.export.whisper_graphs import BLS_MODEL
from polydub.serving.whisper_decode import DecodeOptions, greedy_decode
from polydub.serving.whisper_features import log_mel_spectrogram
from polydub.serving.whisper_ort import OrtGraphs
from polydub.serving.whisper_service import PARAMETERS, TOKENIZER_DIR, WhisperService
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
