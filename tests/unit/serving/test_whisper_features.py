"""Whisper's log mel features (``polydub.serving.whisper_features``) against transformers'
WhisperFeatureExtractor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from polydub.export.whisper_reference import check_audio
from polydub.serving import whisper_features

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(n_mels: int) -> None:
    import transformers

    hf: Any = transformers  # untyped
    extractor = hf.WhisperFeatureExtractor(feature_size=n_mels)
    np.testing.assert_allclose(
        whisper_features.mel_filters(n_mels), extractor.mel_filters.T, atol=1e-12
    )
    rng = np.random.default_rng(3)
    clips = [*check_audio()[:2], (0.3 * rng.standard_normal(31 * 16000)).astype(np.float32)]
    ours = whisper_features.log_mel_spectrogram(clips, n_mels)
    assert ours.shape == (3, n_mels, 3000) and ours.dtype == np.float32
    for clip, features in zip(clips, ours, strict=True):
        # transformers' numpy path (float64 STFT, as ours) and its default (float32 torch STFT).
        padded = np.zeros((1, whisper_features.N_SAMPLES), np.float32)
        padded[0, : min(clip.size, whisper_features.N_SAMPLES)] = clip[: whisper_features.N_SAMPLES]
        reference = extractor._np_extract_fbank_features(padded, "cpu")[0]
        np.testing.assert_allclose(features, reference, atol=5e-7)
        default = extractor(clip, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(features, default, atol=1e-4)


def test_log_mel_of_empty_and_silent_audio() -> None:
    empty, silence = whisper_features.log_mel_spectrogram(
        [np.zeros(0, np.float32), np.zeros(8000)], 80
    )
    # log10(1e-10) = -10 everywhere, floor at max - 8 keeps it, then (x + 4) / 4 = -1.5.
    np.testing.assert_array_equal(empty, np.full((80, 3000), -1.5, np.float32))
    np.testing.assert_array_equal(silence, empty)
