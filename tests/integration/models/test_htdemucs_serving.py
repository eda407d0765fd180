"""HT-Demucs separation served by the real local Triton, on tiny random weights written in
demucs's own checkpoint format (``.th``) and exported through the registry's separation family.

The weights are random: what is checked is the contract. For any length (shorter than a chunk,
exactly one, several with a partial last one) speech + background give back the input within
CONSISTENCY_ATOL, chunk boundaries included; Triton's stems are onnxruntime's; and through the
numpy front end the served graph gives what ``HTDemucs.forward`` gives on the same chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export import htdemucs
from polydub.export.onnx_tools import run_onnx
from polydub.export.separation import SeparationExporter
from polydub.export.spec import Checkpoint, Target
from polydub.infra.triton import InferenceClient
from polydub.media.pcm import read_wav, write_wav
from polydub.orchestrator.inference.htdemucs import (
    MODEL,
    HtDemucsClient,
    HtDemucsSeparator,
    served_chunking,
)
from polydub.serving import htdemucs as front
from polydub.serving.names import HtDemucsIn
from polydub.serving.separation import CONSISTENCY_ATOL
from polydub.settings import Settings
from tests.checkout import place_templates

pytestmark = pytest.mark.integration
SR = front.SAMPLE_RATE
SECONDS = 1.0  # the tiny checkpoint's chunk: short, so the test stays quick on 2 cores
CHUNKING = front.Chunking(2, round(SECONDS * SR))


@pytest.fixture(scope="module")
async def served(
    triton: InferenceClient, stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    checkpoint = htdemucs.tiny_checkpoint(
        tmp_path_factory.mktemp("htdemucs") / "tiny.th", seconds=SECONDS
    )
    repository = stack_settings.model_repository
    report = SeparationExporter().export(
        {"separation": Checkpoint(str(checkpoint), "MIT")}, Target.CPU, repository
    )
    assert report.models == [MODEL]
    place_templates(repository, report.models)
    await triton.load_model(MODEL)
    assert await triton.is_model_ready(MODEL)
    return repository / MODEL / "1" / "model.onnx"


def _audio(length: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / SR
    voice = 0.3 * np.sin(2 * np.pi * (140 + 20 * np.sin(2 * np.pi * 3 * t)) * t)
    left = voice + 0.05 * rng.standard_normal(length)
    right = 0.5 * voice + 0.05 * rng.standard_normal(length)
    out: NDArray[np.float32] = np.stack([left, right], axis=1).astype(np.float32)
    return out


def _local(graph: Path) -> front.SpeechFn:
    def speech(
        waves: NDArray[np.float32], specs: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        feeds = {str(HtDemucsIn.WAVEFORM): waves, str(HtDemucsIn.SPECTROGRAM): specs}
        spec, wave = run_onnx(graph, feeds)
        return spec, wave

    return speech


@pytest.mark.parametrize("length", [SR // 3, CHUNKING.length, 2 * CHUNKING.step + 5000])
async def test_stems_sum_to_the_input_through_triton(
    triton: InferenceClient, served: Path, length: int
) -> None:
    audio = _audio(length)
    stems = await HtDemucsClient(triton, CHUNKING).separate_native(audio)
    assert stems.speech.shape == stems.background.shape == audio.shape
    error = np.abs(stems.speech + stems.background - audio)
    assert float(error.max()) <= CONSISTENCY_ATOL
    for start in CHUNKING.starts(length)[1:]:  # each boundary: where a chunk's cross-fade begins
        window = slice(start - SR // 10, min(length, start + CHUNKING.overlap + SR // 10))
        assert float(error[window].max()) <= CONSISTENCY_ATOL
    local = front.separate(audio, _local(served), CHUNKING)
    assert float(np.abs(stems.speech - local.speech).max()) <= 1e-4
    assert float(np.sum(stems.speech**2)) > 0.0


async def test_any_rate_and_mono_keep_mixture_consistency(
    triton: InferenceClient, served: Path
) -> None:
    rate = 16000
    mono = _audio(round(2.7 * rate))[:, 0]
    stems = await HtDemucsClient(triton, CHUNKING).separate(mono, rate)
    assert stems.speech.shape == mono.shape
    assert float(np.abs(stems.speech + stems.background - mono).max()) <= CONSISTENCY_ATOL
    assert float(np.abs(stems.speech).max()) > 0.0


async def test_the_chunk_is_read_from_the_served_graph(
    triton: InferenceClient, served: Path
) -> None:
    assert await served_chunking(triton) == CHUNKING
    separator = await HtDemucsSeparator.served(triton)
    assert separator.separation.chunking == CHUNKING


async def test_the_mix_separator_keeps_rate_channels_and_consistency(
    triton: InferenceClient, served: Path, tmp_path: Path
) -> None:
    rate, seconds = 48000, 2.3
    stereo = _audio(round(seconds * rate), seed=2)
    original = write_wav(tmp_path / "mix.wav", stereo, rate)
    separator = HtDemucsSeparator(triton, chunking=CHUNKING)
    out = await separator.separate(
        original, tmp_path / "background.wav", speech_wav=tmp_path / "speech16k.wav"
    )
    background, out_rate = read_wav(out)
    assert out_rate == rate and background.shape == stereo.shape
    speech = stereo - background  # per channel: the stereo model's own estimate
    assert float(np.abs(speech).max()) > 0.0
    assert float(np.abs(speech[:, 0] - speech[:, 1]).max()) > CONSISTENCY_ATOL
    speech16k, speech_rate = read_wav(tmp_path / "speech16k.wav")
    assert speech_rate == 16000 and abs(speech16k.shape[0] - round(seconds * 16000)) <= 1
    figures = separator.figures
    assert figures is not None and figures.seconds == pytest.approx(seconds, abs=1e-3)
    assert figures.chunks == len(CHUNKING.starts(round(seconds * SR)))
    assert figures.speech_ratio_db is not None and figures.realtime_factor > 0.0


def test_front_end_and_graph_match_the_pytorch_model(served: Path, tmp_path: Path) -> None:
    """The numpy STFT / iSTFT beside the served graph against HTDemucs.forward's vocals (the
    same seed writes the same weights)."""
    import torch

    model = htdemucs.load(htdemucs.tiny_checkpoint(tmp_path / "tiny.th", seconds=SECONDS))
    chunk = _audio(CHUNKING.length, seed=5).T[None]
    vocals = model.sources.index("vocals")
    with torch.no_grad():
        expected = model(torch.from_numpy(np.ascontiguousarray(chunk)))[0, vocals].numpy()
    spec, wave = _local(served)(chunk, front.spectrogram(chunk[0])[None])
    actual = front.speech_of(spec[0], wave[0], CHUNKING.length)
    assert float(np.abs(actual - expected).max()) <= 1e-3 * float(np.abs(expected).max())
