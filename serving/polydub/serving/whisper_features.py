"""Whisper's input features: log-mel spectrograms of 30 s windows of 16 kHz audio, in numpy.

The same values as transformers' ``WhisperFeatureExtractor`` (tests/unit/serving/test_whisper_features.py
compares them), so the served model needs neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from polydub.serving.names import SAMPLE_RATE

Array = npt.NDArray[Any]

N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000: every window is padded to 30 s
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames -> 1500 encoder positions


def _hz_to_mel(freq: Array) -> Array:
    """Slaney's mel scale (librosa / transformers ``mel_scale="slaney"``): linear below 1 kHz."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = freq / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    above = freq >= 1000.0
    return np.where(above, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / log_step, mels)


def _mel_to_hz(mels: Array) -> Array:
    mels = np.asarray(mels, dtype=np.float64)
    freq = mels * (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(log_step * (mels - 15.0)), freq)


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> Array:
    """Triangular slaney-normalised filters [n_mels, n_fft // 2 + 1] from 0 Hz to 8 kHz.

    The same bank as librosa.filters.mel(sr=16000, n_fft=400, n_mels=...) that Whisper ships.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(8000.0)), n_mels + 2)
    hz = _mel_to_hz(mel_points)
    widths = np.diff(hz)
    slopes = hz[:, None] - fft_freqs[None, :]
    lower = -slopes[:-2] / widths[:-1, None]
    upper = slopes[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(lower, upper))
    filters *= (2.0 / (hz[2 : n_mels + 2] - hz[:n_mels]))[:, None]
    return np.asarray(filters)


_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
_FILTERS: dict[int, Array] = {}


def log_mel_spectrogram(audios: Sequence[Array], n_mels: int) -> Array:
    """Whisper's input features [B, n_mels, 3000] float32 for 16 kHz mono float PCM.

    Each clip is cut or zero-padded to 30 s, then: centred STFT (reflect padding, periodic Hann,
    400-point FFT, hop 160), power spectrum, mel filters, log10 clamped at 1e-10, floor at the
    clip's own maximum - 8, and (x + 4) / 4. An empty clip is 30 s of silence.
    """
    if n_mels not in _FILTERS:
        _FILTERS[n_mels] = mel_filters(n_mels)
    filters = _FILTERS[n_mels]
    out = np.empty((len(audios), n_mels, N_FRAMES), dtype=np.float32)
    for i, audio in enumerate(audios):
        clip = np.zeros(N_SAMPLES, dtype=np.float64)
        samples = np.asarray(audio, dtype=np.float64).reshape(-1)[:N_SAMPLES]
        clip[: samples.size] = samples
        padded = np.pad(clip, N_FFT // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
        power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # [3001, 201]
        mel = filters @ power[:-1].T  # the last frame is dropped, as Whisper does
        log_spec = np.log10(np.maximum(mel, 1e-10))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        out[i] = (log_spec + 4.0) / 4.0
    return out
