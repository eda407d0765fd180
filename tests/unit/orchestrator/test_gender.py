"""The orchestrator's gender client (``polydub.orchestrator.inference.gender``): espeak-ng voices
told apart through the tiny export (run by onnxruntime in-process), and the decision rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.gender import num_frames
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import ExportReport
from polydub.orchestrator.inference.gender import GenderClient, GenderEstimate, decide
from tests.speech_audio import FEMALE, MALE, speak

pytestmark = pytest.mark.unit
SR = 16000
SENTENCE = "Hello there, this is my natural speaking voice, reading a short sentence."


class LocalInfer:
    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.shapes: list[tuple[int, ...]] = []

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        self.shapes += [v.shape for v in inputs.values()]
        path = self.repository / model / "1" / "model.onnx"
        return dict(zip(outputs, run_onnx(path, inputs, outputs), strict=True))


@pytest.mark.parametrize(("voice", "label"), [(MALE, "male"), (FEMALE, "female")])
async def test_espeak_voices(
    gender_export: tuple[Path, ExportReport], voice: str, label: str
) -> None:
    repository, _ = gender_export
    local = LocalInfer(repository)
    estimate = await GenderClient(local).classify(speak(SENTENCE, voice))
    assert estimate.label == label
    assert estimate.confidence > 0.8
    assert estimate.median_f0_hz is not None
    if label == "male":
        assert 85 < estimate.median_f0_hz < 140
    else:
        assert 180 < estimate.median_f0_hz < 260
    assert local.shapes == [(1, 160000)]  # one fixed-shape 10 s piece


async def test_long_audio_is_split_into_pieces(gender_export: tuple[Path, ExportReport]) -> None:
    repository, _ = gender_export
    local = LocalInfer(repository)
    speech = speak(SENTENCE, FEMALE)
    audio = np.concatenate([speech, np.zeros(12 * SR, np.float32), speech])
    pieces = -(-audio.size // 160000)
    assert pieces >= 2
    f0, _, _ = await GenderClient(local).features(audio)
    assert local.shapes == [(1, 160000)] * pieces
    assert f0.size == pieces * num_frames(160000)
    assert (await GenderClient(local).classify(audio)).label == "female"


async def test_silence_and_empty_are_unknown(gender_export: tuple[Path, ExportReport]) -> None:
    repository, _ = gender_export
    client = GenderClient(LocalInfer(repository))
    assert await client.classify(np.zeros(0, np.float32)) == GenderEstimate("unknown", 0.0, None)
    silent = await client.classify(np.zeros(2 * SR, np.float32))
    assert silent.label == "unknown" and silent.median_f0_hz is None
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.1
    assert (await client.classify(noise)).label == "unknown"


def test_rule_threshold_and_confidence() -> None:
    n = 100  # one second of voiced frames
    ones, loud = np.ones(n, np.float32), np.full(n, -20.0, np.float32)
    low = decide(np.full(n, 120.0, np.float32), ones, loud)
    high = decide(np.full(n, 210.0, np.float32), ones, loud)
    edge = decide(np.full(n, 166.0, np.float32), ones, loud)
    assert (low.label, high.label, edge.label) == ("male", "female", "female")
    assert edge.confidence < 0.6 < 0.9 < low.confidence
    few = decide(np.full(n, 120.0, np.float32), np.where(np.arange(n) < 10, 1.0, 0.0), loud)
    assert few.label == "unknown" and few.voiced_s == pytest.approx(0.1)
