import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.media.stretch import stretch
from polydub.orchestrator.voices import estimate_f0

pytestmark = pytest.mark.integration

RATE = 16000


def harmonic(f0: float, seconds: float = 1.0) -> NDArray[np.float32]:
    t = np.arange(round(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return np.asarray(0.2 * wave, dtype=np.float32)


def test_tempo_keeps_pitch_and_gives_exact_lengths() -> None:
    out = stretch(harmonic(150.0), RATE, tempo=1.25)
    assert out.engine == "rubberband" and out.formant_preserved
    assert out.tempo == 1.25 and len(out.samples) == 12800 and out.duration == 0.8
    assert estimate_f0(out.samples, RATE) == pytest.approx(150.0, rel=0.01)
    slower = stretch(harmonic(150.0), RATE, tempo=0.8)
    assert len(slower.samples) == 20000


def test_tempo_is_bounded_and_reported() -> None:
    out = stretch(harmonic(150.0, 0.5), RATE, tempo=2.0)
    assert out.tempo == 1.3 and len(out.samples) == round(8000 / 1.3)
    out = stretch(harmonic(150.0, 0.5), RATE, tempo=2.0, max_tempo=2.0)
    assert out.tempo == 2.0 and len(out.samples) == 4000


@pytest.mark.parametrize("semitones", [-5.0, 4.0, 12.0])
def test_pitch_shift_keeps_duration(semitones: float) -> None:
    out = stretch(harmonic(150.0), RATE, semitones=semitones)
    assert len(out.samples) == RATE and out.semitones == semitones and out.formant_preserved
    expected = 150.0 * 2 ** (semitones / 12)
    assert estimate_f0(out.samples, RATE) == pytest.approx(expected, rel=0.02)


def test_tempo_pitch_and_resampling_in_one_pass() -> None:
    out = stretch(harmonic(200.0), RATE, tempo=1.1, semitones=-3.0, out_rate=48000)
    assert out.sample_rate == 48000 and len(out.samples) == round(16000 / 1.1 * 3)
    assert estimate_f0(out.samples, 48000) == pytest.approx(200.0 * 2 ** (-3 / 12), rel=0.02)


def test_atempo_fallback_is_not_formant_preserving() -> None:
    out = stretch(harmonic(150.0), RATE, tempo=1.2, semitones=3.0, engine="atempo")
    assert out.engine == "atempo" and not out.formant_preserved
    assert len(out.samples) == round(RATE / 1.2)
    assert estimate_f0(out.samples, RATE) == pytest.approx(150.0 * 2**0.25, rel=0.02)
    plain = stretch(harmonic(150.0), RATE, tempo=0.6, engine="atempo", max_tempo=2.0)
    assert plain.formant_preserved and len(plain.samples) == round(RATE / 0.6)


def test_identity_and_layouts() -> None:
    x = harmonic(150.0, 0.1)
    same = stretch(x, RATE)
    assert same.engine == "none" and np.array_equal(same.samples, x)
    stereo = stretch(np.stack([x, -x], 1), RATE, tempo=1.25)
    assert stereo.samples.shape == (1280, 2)
    assert stretch(np.zeros(0, np.float32), RATE, tempo=1.2).samples.shape == (0,)
