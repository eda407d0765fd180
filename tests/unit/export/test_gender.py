"""Gender: the pitch graph matches torch and tracks F0 (the client and its rule are tested in
tests/unit/orchestrator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polydub.export.gender import MODEL, GenderExporter, num_frames, parity_waveforms
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import ExportReport

pytestmark = pytest.mark.unit
SR = 16000


def test_export(gender_export: tuple[Path, ExportReport]) -> None:
    repository, report = gender_export
    assert report.models == [MODEL] and report.max_abs_diff[MODEL] <= 1e-2
    assert (repository / MODEL / "1" / "model.onnx").is_file()
    assert "max_batch_size: 16" in (repository / MODEL / "config.pbtxt").read_text()
    assert not GenderExporter().choosable


def test_graph_tracks_a_gliding_pitch(gender_export: tuple[Path, ExportReport]) -> None:
    repository, _ = gender_export
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
