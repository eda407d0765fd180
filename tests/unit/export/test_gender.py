"""Gender: the pitch graph matches torch, tracks F0, and the rule tells espeak-ng voices apart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.gender import MODEL, GenderExporter, num_frames, parity_waveforms
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import ExportReport, Preset, Target
from polydub.orchestrator.inference.gender import GenderClient, GenderEstimate, decide
from tests.checkout import place_templates
from tests.unit.export.speech_audio import FEMALE, MALE, speak

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


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    repository = tmp_path_factory.mktemp("repo")
    exporter = GenderExporter()
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
    place_templates(repository, report.models)
    return repository, report


def test_export(exported: tuple[Path, ExportReport]) -> None:
    repository, report = exported
    assert report.models == [MODEL] and report.max_abs_diff[MODEL] <= 1e-2
    assert (repository / MODEL / "1" / "model.onnx").is_file()
    assert "max_batch_size: 16" in (repository / MODEL / "config.pbtxt").read_text()
    assert not GenderExporter().choosable


def test_graph_tracks_a_gliding_pitch(exported: tuple[Path, ExportReport]) -> None:
    repository, _ = exported
    voice, noise = parity_waveforms()
    f0, periodicity, energy = run_onnx(
        repository / MODEL / "1" / "model.onnx", {"waveform": np.stack([voice, noise])}
    )
    assert f0.shape == periodicity.shape == energy.shape == (2, num_frames(voice.size))
    centres = (np.arange(f0.shape[1]) * 160 + 320) / SR
    truth = 95 + 135 * centres / (voice.size / SR)
    np.testing.assert_allclose(f0[0], truth, rtol=0.02)  # within 2% all along 95 -> 230 Hz
    assert periodicity[0].min() > 0.9  # a harmonic voice is periodic
    assert np.median(periodicity[1]) < 0.5  # white noise is not
    assert abs(float(np.median(energy[0])) - 10 * np.log10(np.mean(voice**2))) < 1.5


@pytest.mark.parametrize(("voice", "label"), [(MALE, "male"), (FEMALE, "female")])
async def test_espeak_voices(exported: tuple[Path, ExportReport], voice: str, label: str) -> None:
    repository, _ = exported
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


async def test_long_audio_is_split_into_pieces(exported: tuple[Path, ExportReport]) -> None:
    repository, _ = exported
    local = LocalInfer(repository)
    speech = speak(SENTENCE, FEMALE)
    audio = np.concatenate([speech, np.zeros(12 * SR, np.float32), speech])
    pieces = -(-audio.size // 160000)
    assert pieces >= 2
    f0, _, _ = await GenderClient(local).features(audio)
    assert local.shapes == [(1, 160000)] * pieces
    assert f0.size == pieces * num_frames(160000)
    assert (await GenderClient(local).classify(audio)).label == "female"


async def test_silence_and_empty_are_unknown(exported: tuple[Path, ExportReport]) -> None:
    repository, _ = exported
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
