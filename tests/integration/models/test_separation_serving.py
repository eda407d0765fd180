"""Speech / background separation served by the real local Triton, on the tiny random weights.

The weights are random, so the stems say nothing about quality here (bench/separation.py
measures that); what is checked is the contract: for any length, speech + background give back
the input within CONSISTENCY_ATOL, chunk boundaries included, Triton answers what onnxruntime
answers, and chunks of concurrent jobs are batched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.onnx_tools import run_onnx
from polydub.export.separation import MODEL, SeparationExporter
from polydub.export.spec import Preset, Target
from polydub.infra.triton import InferenceClient
from polydub.media.pcm import read_wav, write_wav
from polydub.orchestrator.inference.separation import SeparationClient, TritonSeparator
from polydub.serving.separation import (
    CHUNK,
    CONSISTENCY_ATOL,
    STEP,
    chunk_starts,
    separate,
)
from polydub.settings import Settings
from tests.checkout import place_templates

pytestmark = pytest.mark.integration
SR = 16000


@pytest.fixture(scope="module")
async def served(triton: InferenceClient, stack_settings: Settings) -> Path:
    repository = stack_settings.model_repository
    exporter = SeparationExporter()
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
    place_templates(repository, report.models)
    await triton.load_model(MODEL)
    assert await triton.is_model_ready(MODEL)
    return repository / MODEL / "1" / "model.onnx"


def _audio(length: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / SR
    voice = 0.3 * np.sin(2 * np.pi * (140 + 20 * np.sin(2 * np.pi * 3 * t)) * t)
    out: NDArray[np.float32] = (voice + 0.05 * rng.standard_normal(length)).astype(np.float32)
    return out


def _local_mask(graph: Path) -> Any:
    def mask(specs: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = run_onnx(graph, {"spectrogram": specs})[0]
        return out

    return mask


@pytest.mark.parametrize("length", [SR, CHUNK, 2 * STEP + CHUNK + 777])
async def test_stems_sum_to_the_input_through_triton(
    triton: InferenceClient, served: Path, length: int
) -> None:
    audio = _audio(length)
    stems = await SeparationClient(triton).separate(audio)
    error = np.abs(stems.speech + stems.background - audio)
    assert float(error.max()) <= CONSISTENCY_ATOL
    for start in chunk_starts(length)[1:]:  # each boundary: where a chunk's cross-fade begins
        window = slice(start - SR // 2, min(length, start + CHUNK - STEP + SR // 2))
        assert float(error[window].max()) <= CONSISTENCY_ATOL
    # Triton's masks are onnxruntime's: the stems equal the in-process separation's.
    local = separate(audio, _local_mask(served))
    assert float(np.abs(stems.speech - local.speech).max()) <= 1e-4
    assert 0.0 < float(np.sum(stems.speech**2)) < float(np.sum(audio**2)) * 1.5


async def test_chunks_of_concurrent_jobs_are_batched(triton: InferenceClient, served: Path) -> None:
    before = await triton.statistics(MODEL)
    client = SeparationClient(triton)
    jobs = [_audio(3 * STEP + CHUNK, seed) for seed in range(3)]
    await asyncio.gather(*(client.separate(a) for a in jobs))
    after = await triton.statistics(MODEL)
    requests = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert requests == 3 * len(chunk_starts(jobs[0].size))
    assert 0 < executions < requests


async def test_the_mix_separator_writes_the_background_at_the_mix_rate(
    triton: InferenceClient, served: Path, tmp_path: Path
) -> None:
    rate, seconds = 48000, 7.3
    mono = _audio(round(seconds * SR))
    stereo = np.stack(
        [np.interp(np.arange(round(seconds * rate)) / 3, np.arange(mono.size), mono)] * 2, axis=1
    ).astype(np.float32)
    stereo[:, 1] *= 0.5  # channels differ: the same speech estimate leaves each
    original = write_wav(tmp_path / "mix.wav", stereo, rate)
    separator = TritonSeparator(triton)
    out = await separator.separate(original, tmp_path / "background.wav")
    background, out_rate = read_wav(out)
    assert out_rate == rate and background.shape == stereo.shape
    speech = stereo - background  # the speech estimate, the same in both channels
    assert float(np.abs(speech[:, 0] - speech[:, 1]).max()) <= CONSISTENCY_ATOL
    assert float(np.abs(speech).max()) > 0.0
    figures = separator.figures
    assert figures is not None and figures.seconds == pytest.approx(seconds, abs=1e-3)
    assert figures.chunks == 2 and figures.speech_ratio_db is not None
    assert figures.realtime_factor > 0.0
