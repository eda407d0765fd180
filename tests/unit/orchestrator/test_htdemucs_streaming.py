"""The HT-Demucs separator streams: a block at a time, through scratch files, it writes what the
whole-array path (``HtDemucsClient.separate``) gives, for stereo and mono mixes at any rate,
with blocks far shorter than the input so every seam is crossed. The network is a linear
stand-in answering each chunk in numpy (speech = half its spectrogram branch + a quarter of
its waveform branch); what is checked is the streaming around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.signal import resample_poly

from polydub.errors import ConfigurationError
from polydub.media.pcm import read_wav, write_wav
from polydub.orchestrator.inference import htdemucs
from polydub.orchestrator.inference.blocks import (
    chunk_weights,
    resampled_blocks,
    resampled_length,
)
from polydub.orchestrator.stages.separate import fallback_reason
from polydub.serving import htdemucs as front
from polydub.serving.names import HtDemucsIn, HtDemucsOut

pytestmark = pytest.mark.unit
CHUNKING = front.Chunking(2, front.SAMPLE_RATE // 2)


class Linear:
    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        return {
            HtDemucsOut.SPEECH_SPECTROGRAM: 0.5 * inputs[HtDemucsIn.SPECTROGRAM],
            HtDemucsOut.SPEECH_WAVEFORM: 0.25 * inputs[HtDemucsIn.WAVEFORM],
        }


def _mix(frames: int, channels: int, rate: int) -> NDArray[np.float32]:
    rng = np.random.default_rng(channels)
    t = np.arange(frames) / rate
    voice = 0.3 * np.sin(2 * np.pi * (150 + 30 * np.sin(2 * np.pi * 2 * t)) * t)
    noise = 0.05 * rng.standard_normal((frames, channels))
    out: NDArray[np.float32] = (voice[:, None] * np.linspace(1, 0.5, channels) + noise).astype(
        np.float32
    )
    return out


def _scratch_left(folder: Path) -> list[Path]:
    return list(folder.glob(".htdemucs-*"))


@pytest.mark.parametrize(("rate", "channels"), [(48000, 2), (16000, 1), (44100, 2)])
async def test_streamed_stems_match_the_whole_array_path(
    rate: int, channels: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(htdemucs, "BLOCK_SECONDS", 1)  # many seams in 3.7 s
    mix = _mix(round(3.7 * rate), channels, rate)
    path = write_wav(tmp_path / "mix.wav", mix, rate)
    separator = htdemucs.HtDemucsSeparator(Linear(), chunking=CHUNKING)
    out = await separator.separate(path, tmp_path / "bg.wav", speech_wav=tmp_path / "s16.wav")

    layout = mix if channels == 2 else mix[:, 0]
    whole = await htdemucs.HtDemucsClient(Linear(), CHUNKING).separate(layout, rate)
    background, out_rate = read_wav(out)
    assert out_rate == rate and background.shape == mix.shape
    expected = mix - (whole.speech if channels == 2 else whole.speech[:, None])
    assert float(np.abs(background - expected).max()) <= 1e-5
    assert float(np.abs(mix - background).max()) > 0.01  # speech was taken out
    assert not _scratch_left(tmp_path)  # the scratch files are gone

    native = htdemucs.resample(layout, rate, front.SAMPLE_RATE)
    stems = await htdemucs.HtDemucsClient(Linear(), CHUNKING).separate_native(native)
    mono = stems.speech.mean(axis=1) if channels == 2 else stems.speech
    speech16k, speech_rate = read_wav(tmp_path / "s16.wav")
    assert speech_rate == 16000 and speech16k.shape == (
        resampled_length(mix.shape[0], rate, 16000),
        1,
    )
    reference = htdemucs.resample(mono, front.SAMPLE_RATE, 16000)
    n = min(reference.size, speech16k.shape[0])
    assert float(np.abs(speech16k[:n, 0] - reference[:n]).max()) <= 1e-5

    figures = separator.figures
    assert figures is not None and figures.seconds == pytest.approx(3.7, abs=1e-3)
    assert figures.chunks == len(CHUNKING.starts(native.shape[0]))
    assert figures.speech_ratio_db is not None and figures.speech_ratio_db < 3.0


@pytest.mark.parametrize(("rate", "to"), [(48000, 44100), (44100, 16000), (16000, 44100)])
def test_resampled_blocks_join_into_the_whole(rate: int, to: int) -> None:
    x = np.random.default_rng(1).standard_normal((20011, 2)).astype(np.float32)
    parts = np.concatenate(list(resampled_blocks(lambda a, b: x[a:b], x.shape[0], rate, to, 999)))
    g = np.gcd(rate, to)
    whole = resample_poly(x.astype(np.float64), to // g, rate // g, axis=0)
    assert parts.shape == whole.shape == (resampled_length(x.shape[0], rate, to), 2)
    assert float(np.abs(parts - whole).max()) <= 1e-6


@pytest.mark.parametrize("samples", [700, CHUNKING.length, 2 * CHUNKING.step + 5, 100003])
def test_chunk_weights_are_the_overlap_adds(samples: int) -> None:
    reference = front.OverlapAdd(CHUNKING, samples)
    for start in CHUNKING.starts(samples):
        reference.add(start, np.ones((2, CHUNKING.length)))
    pieces = [
        chunk_weights(CHUNKING, samples, a, min(samples, a + 4321)) for a in range(0, samples, 4321)
    ]
    assert float(np.abs(np.concatenate(pieces) - reference.weight).max()) == 0.0


class Metadata(Linear):
    def __init__(self, length: str) -> None:
        self.length = length

    async def model_metadata(self, model: str) -> dict[str, Any]:
        wave = {"name": HtDemucsIn.WAVEFORM, "datatype": "FP32", "shape": ["-1", "2", self.length]}
        return {"name": model, "inputs": [wave]}


async def test_the_chunk_comes_from_the_served_graph() -> None:
    separator = await htdemucs.HtDemucsSeparator.served(Metadata("343980"))
    assert separator.separation.chunking == htdemucs.RELEASED
    with pytest.raises(ConfigurationError) as caught:
        await htdemucs.served_chunking(Metadata("-1"))  # a graph exported without a fixed chunk
    assert fallback_reason(caught.value) == "separation failed: separation_bad_config"
