from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.media.mix import (
    MixPolicy,
    Placement,
    background_track,
    duck_envelope,
    measure_loudness,
    merge_intervals,
    mix_to_wav,
    render_segment,
    render_segments,
)
from polydub.media.pcm import read_wav, write_wav
from polydub.orchestrator.timing import plan_timing
from tests.media import background, tone

pytestmark = pytest.mark.integration

RATE = 48000


def stereo(x: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.stack([x, x], 1)


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(
        tmp_path_factory.mktemp("mix") / "bg.wav", stereo(tone(6.0, 220.0, amplitude=0.1)), RATE
    )


def test_ducking_is_exact_and_loudness_is_normalised(music: Path, tmp_path: Path) -> None:
    silent_speech = [Placement(2.0, np.zeros(RATE, np.float32))]
    result = mix_to_wav(music, silent_speech, tmp_path / "out.wav", intervals=[(2.0, 3.0)])
    out, rate = read_wav(result.path)
    bg, _ = read_wav(music)
    assert rate == RATE and out.shape == bg.shape and result.frames == 6 * RATE
    gain = 10 ** (result.gain_db / 20)
    far = slice(RATE // 2, RATE)  # well before the attack ramp
    assert np.allclose(out[far], bg[far] * gain, atol=1e-6)
    under = slice(2 * RATE, 3 * RATE)
    assert np.allclose(out[under], bg[under] * gain * 10 ** (-15 / 20), atol=1e-6)
    assert result.measured.integrated_lufs == pytest.approx(-23.0 - result.gain_db, abs=0.05)
    assert result.loudness.integrated_lufs == pytest.approx(-23.0, abs=0.2)
    assert result.loudness.true_peak_dbtp <= -1.0 + 0.1 and result.clipped_samples == 0
    assert result.ducked_seconds == 1.0 and not result.separated


@pytest.mark.parametrize("level_db, target", [(-40.0, -23.0), (-10.0, -23.0), (-60.0, -16.0)])
def test_loudness_of_the_mix_is_its_measured_loudness(
    tmp_path: Path, level_db: float, target: float
) -> None:
    # Noise with quiet stretches near the absolute gate: the shifted loudness (no second
    # measurement) must be what ffmpeg measures of the delivered file.
    x = background(6.0, level_db=level_db)
    x[RATE : 2 * RATE] *= np.float32(10 ** (-35 / 20))
    path = write_wav(tmp_path / "in.wav", stereo(x), RATE)
    result = mix_to_wav(path, [], tmp_path / "out.wav", intervals=[],
                        policy=MixPolicy(target_lufs=target))  # fmt: skip
    again = measure_loudness(result.path)
    assert result.clipped_samples == 0
    assert result.loudness.integrated_lufs == pytest.approx(again.integrated_lufs, abs=0.11)
    assert result.loudness.true_peak_dbtp == pytest.approx(again.true_peak_dbtp, abs=0.11)
    assert result.loudness.lra == pytest.approx(again.lra, abs=0.11)


def test_speech_is_placed_sample_accurately(tmp_path: Path) -> None:
    silence = write_wav(tmp_path / "silence.wav", np.zeros((RATE, 2), np.float32), RATE)
    click = np.zeros(100, np.float32)
    click[0] = 0.5
    placements = [Placement(0.25, click), Placement(0.5 + 1 / RATE, -click)]
    result = mix_to_wav(silence, placements, tmp_path / "out.wav", intervals=[],
                        policy=MixPolicy(chunk_seconds=0.3))  # fmt: skip
    out, _ = read_wav(result.path)
    gain = 10 ** (result.gain_db / 20)
    assert np.flatnonzero(out[:, 0]).tolist() == [12000, 24001]
    assert out[12000, 1] == pytest.approx(0.5 * gain, rel=1e-6)
    assert out[24001, 0] == pytest.approx(-0.5 * gain, rel=1e-6)


def test_loud_input_is_limited_by_true_peak(tmp_path: Path) -> None:
    square = np.sign(tone(2.0, 100.0)).astype(np.float32) * 0.99
    loud = write_wav(tmp_path / "loud.wav", stereo(square), RATE)
    result = mix_to_wav(loud, [], tmp_path / "out.wav", intervals=[],
                        policy=MixPolicy(target_lufs=0.0))  # fmt: skip
    assert result.gain_db == pytest.approx(-1.0 - result.measured.true_peak_dbtp, abs=0.011)
    assert result.gain_db < 0.0 - result.measured.integrated_lufs  # the peak, not the target
    assert result.loudness.true_peak_dbtp <= -0.9 and result.clipped_samples == 0


def test_clipping_is_counted_then_clipped(tmp_path: Path) -> None:
    x = stereo(background(1.0, level_db=-20.0))
    path = write_wav(tmp_path / "x.wav", x, RATE)
    policy = MixPolicy(target_lufs=0.0, max_true_peak=12.0)
    result = mix_to_wav(path, [], tmp_path / "out.wav", intervals=[], policy=policy)
    expected = int(np.count_nonzero(np.abs(x * np.float32(10 ** (result.gain_db / 20))) > 1.0))
    assert result.clipped_samples == expected > 0
    out, _ = read_wav(result.path)
    assert float(np.abs(out).max()) == 1.0


def test_separated_stem_is_barely_ducked(music: Path, tmp_path: Path) -> None:
    result = mix_to_wav(music, [], tmp_path / "out.wav", intervals=[(2.0, 3.0)], separated=True)
    out, _ = read_wav(result.path)
    bg, _ = read_wav(music)
    gain = 10 ** (result.gain_db / 20)
    assert np.allclose(out[2 * RATE : 3 * RATE], bg[2 * RATE : 3 * RATE] * gain * 10 ** (-3 / 20),
                       atol=1e-6)  # fmt: skip
    assert result.separated


async def test_background_track_uses_the_separator_when_given(music: Path, tmp_path: Path) -> None:
    class HalfVolume:  # stands in for a source-separation model served by Triton
        async def separate(self, mix_wav: Path, out_wav: Path) -> Path:
            samples, rate = read_wav(mix_wav)
            return write_wav(out_wav, samples * 0.5, rate)

    assert await background_track(music, tmp_path / "stem.wav", None) == (music, False)
    stem, separated = await background_track(music, tmp_path / "stem.wav", HalfVolume())
    assert separated and stem == tmp_path / "stem.wav"
    assert np.allclose(read_wav(stem)[0], read_wav(music)[0] * 0.5)


def test_render_segments_match_the_plan_exactly() -> None:
    speech = [tone(2.6, 150.0, sample_rate=16000), tone(1.0, 200.0, sample_rate=16000),
              tone(3.0, 120.0, sample_rate=16000)]  # fmt: skip
    spans = [
        type("S", (), {"start": s, "end": e})() for s, e in [(0.0, 2.0), (3.0, 4.5), (5.0, 6.0)]
    ]
    natural = [len(s) / 16000 for s in speech]
    plan = plan_timing(spans, natural, synthesized=natural, timeline_end=6.5)
    stretches = [round(s.stretch, 4) for s in plan.segments]
    assert stretches == [1.3, 1.0, 1.3]
    rendered = render_segments(speech, 16000, plan.segments, [2.0, -1.0, 2.0])
    for audio, timing in zip(rendered, plan.segments, strict=True):
        assert len(audio) == round(timing.dubbed_duration * RATE)
    assert [round(t.dubbed_duration, 6) for t in plan.segments] == [2.0, 1.0, 1.5]
    assert plan.segments[2].overflow == pytest.approx(3.0 / 1.3 - 1.5)
    assert np.abs(rendered[2][-1]) < 1e-3  # truncated with a fade-out
    one = render_segment(speech[0], 16000, plan.segments[0], semitones=2.0)
    assert len(one) == len(rendered[0]) == 96000


def test_merge_and_envelope_on_real_intervals() -> None:
    merged = merge_intervals([(1.0, 2.0), (2.3, 3.0)], MixPolicy().bridge_gap)
    gain = duck_envelope(0, 4 * RATE, RATE, merged, -15.0, MixPolicy())
    assert merged == [(1.0, 3.0)] and float(gain[int(2.15 * RATE)]) == pytest.approx(10 ** (-0.75))


def test_measure_loudness_of_a_reference_tone(tmp_path: Path) -> None:
    # EBU Tech 3341: a 1 kHz stereo sine at -18 dBFS peak per channel reads -18 LUFS... within 0.1
    sine = tone(5.0, 1000.0, amplitude=10 ** (-18 / 20))
    loudness = measure_loudness(write_wav(tmp_path / "ref.wav", stereo(sine), RATE))
    assert loudness.integrated_lufs == pytest.approx(-18.0, abs=0.1)
    assert loudness.true_peak_dbtp == pytest.approx(-18.0, abs=0.1)
