from pathlib import Path

import numpy as np
import pytest

from polydub.media.extract import extract_audio, extract_mix_wav, extract_model_audio
from polydub.media.pcm import read_wav
from polydub.media.probe import probe
from tests.media import make_audio, make_video, tone

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 s stereo at 48 kHz: 300 Hz left, a ramp of loudness right; int16 so values are exact.
    left = tone(3.0, 300.0, amplitude=0.5)
    right = np.linspace(0.0, 0.5, len(left), dtype=np.float32)
    return make_audio(tmp_path_factory.mktemp("extract") / "a.wav", np.stack([left, right], 1))


def test_model_audio_is_16k_mono_float32(tmp_path: Path) -> None:
    levels = np.tile(np.array([[0.4, 0.2]], np.float32), (48000, 1))  # 1 s of DC, stereo
    samples = extract_model_audio(make_audio(tmp_path / "dc.wav", levels), media_duration=1.0)
    assert samples.dtype == np.float32 and samples.shape == (16000,)
    # ffmpeg's standard down-mix, as Whisper's own loader does: each stereo channel at -3 dB
    assert np.abs(samples[100:-100] - 0.6 / np.sqrt(2)).max() < 1e-3


def test_model_audio_time_range_is_sample_accurate(wav: Path) -> None:
    samples = extract_model_audio(wav, start=1.0, end=2.5, media_duration=3.0)
    assert samples.shape == (24000,)
    full = extract_model_audio(wav, media_duration=3.0)
    assert np.abs(samples[100:-100] - full[16100 : 40000 - 100]).max() < 1e-3


def test_mix_wav_keeps_rate_and_channels(wav: Path, tmp_path: Path) -> None:
    out = extract_mix_wav(wav, tmp_path / "mix.wav", media_duration=3.0)
    assert (out.sample_rate, out.channels, out.frames, out.duration) == (48000, 2, 144000, 3.0)
    samples, rate = read_wav(out.path)
    source, _ = read_wav(wav)
    assert rate == 48000 and np.array_equal(samples, source)  # s16 -> f32 is exact
    part = extract_mix_wav(wav, tmp_path / "part.wav", start=0.5, end=1.0, media_duration=3.0,
                           sample_rate=16000,
                           channels=1)  # fmt: skip
    assert (part.frames, part.channels, part.sample_rate) == (8000, 1, 16000)


def test_mix_wav_of_a_video_trimmed_to_the_audio_stream(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", 2.0)
    info = probe(video)
    out = extract_mix_wav(video, tmp_path / "v.wav", media_duration=info.audio_duration)
    assert out.frames == 96000 and out.channels == 2


def test_output_never_runs_past_the_probed_duration(wav: Path) -> None:
    assert extract_model_audio(wav, media_duration=1.0).shape == (16000,)
    assert extract_model_audio(wav, start=0.5, end=9.0, media_duration=1.0).shape == (8000,)
    with pytest.raises(ValueError):
        extract_model_audio(wav, start=2.0, media_duration=1.0)


@pytest.mark.parametrize("start, end", [(None, None), (0.5, 1.5)])
def test_one_decode_gives_what_the_two_extracts_give(
    tmp_path: Path, start: float | None, end: float | None
) -> None:
    video = make_video(tmp_path / "v.mp4", 2.0)  # AAC: a lossy decode, so compare it exactly
    duration = probe(video).audio_duration
    speech, mixed = extract_audio(video, tmp_path / "both.wav", start=start, end=end,
                                  media_duration=duration)  # fmt: skip
    alone = extract_model_audio(video, start=start, end=end, media_duration=duration)
    assert speech.dtype == np.float32 and np.array_equal(speech, alone)
    wav = extract_mix_wav(video, tmp_path / "alone.wav", start=start, end=end,
                          media_duration=duration)  # fmt: skip
    assert (mixed.sample_rate, mixed.channels, mixed.frames) == (48000, 2, wav.frames)
    assert np.array_equal(read_wav(mixed.path)[0], read_wav(wav.path)[0])
