"""Silero VAD: the batched rebuild matches the shipped ONNX (the client that finds real speech with
it is tested in tests/unit/orchestrator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import ExportReport
from polydub.export.vad import MODEL, original_probs, source_onnx
from tests.speech_audio import MALE, speak

pytestmark = pytest.mark.unit


def test_export_writes_model_and_config(vad_export: tuple[Path, ExportReport]) -> None:
    repository, report = vad_export
    assert report.models == [MODEL]
    assert (repository / MODEL / "1" / "model.onnx").is_file()
    config = (repository / MODEL / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 16" in config
    assert (repository / MODEL / "configs" / "gpu.pbtxt").is_file()
    assert report.max_abs_diff[MODEL] <= 1e-4  # vs the torch rebuild
    assert report.max_abs_diff[f"{MODEL}:vs_shipped_onnx"] <= 1e-4


def test_shipped_model_is_the_faster_whisper_asset() -> None:
    path = source_onnx()
    assert path.name == "silero_vad_v6.onnx" and path.parent.name == "assets"
    assert path.stat().st_size > 1_000_000  # real weights, not a stub


def test_batched_graph_equals_shipped_graph_per_stream(
    vad_export: tuple[Path, ExportReport],
) -> None:
    repository, _ = vad_export
    speech = speak("Testing one two three.", MALE)
    a = np.concatenate([np.zeros(8000, np.float32), speech])[: 40 * 512]
    b = np.concatenate([speech, np.zeros(20000, np.float32)])[: 40 * 512]
    audio = np.stack([np.concatenate([np.zeros(64, np.float32), x]) for x in (a, b)])
    probs, state = run_onnx(
        repository / MODEL / "1" / "model.onnx",
        {"audio": audio, "state": np.zeros((2, 2, 128), np.float32)},
    )
    assert probs.shape == (2, 40) and state.shape == (2, 2, 128)
    for row, x in zip(probs, (a, b), strict=True):
        np.testing.assert_allclose(row, original_probs(source_onnx(), x), atol=1e-5)
    assert probs.max() > 0.9 and probs.min() < 0.1  # real weights: speech and silence differ
