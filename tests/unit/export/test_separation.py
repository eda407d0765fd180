"""The separation family: STFT / overlap-add beside the graph, the exported mask net, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export.onnx_tools import run_onnx
from polydub.export.separation import (
    MODEL,
    MODEL_TYPE,
    MaskNetConfig,
    SeparationExporter,
    build,
)
from polydub.export.spec import RANDOM, Checkpoint, Preset, Target
from polydub.serving.separation import (
    BINS,
    CHUNK,
    CONSISTENCY_ATOL,
    FRAMES,
    STEP,
    Stems,
    chunk_starts,
    separate,
)

pytestmark = pytest.mark.unit
LENGTH = 2 * STEP + CHUNK + 12345  # four chunks, the last one partial


def _audio(length: int = LENGTH) -> NDArray[np.float32]:
    rng = np.random.default_rng(3)
    t = np.arange(length) / 16000
    tone = 0.4 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    out: NDArray[np.float32] = (tone + 0.1 * rng.standard_normal(length)).astype(np.float32)
    return out


def _ones(specs: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.ones((specs.shape[0], specs.shape[2], specs.shape[3]), np.float32)


def _boundaries(length: int) -> list[slice]:
    """Half a second either side of every chunk's start and end inside the signal."""
    edges = {e for s in chunk_starts(length) for e in (s, s + CHUNK) if 0 < e < length}
    return [slice(max(0, e - 8000), min(length, e + 8000)) for e in sorted(edges)]


def _check_consistent(stems: Stems, audio: NDArray[np.float32]) -> None:
    assert stems.speech.shape == stems.background.shape == audio.shape
    error = np.abs(stems.speech + stems.background - audio)
    assert float(error.max(initial=0.0)) <= CONSISTENCY_ATOL
    for window in _boundaries(audio.size):
        assert float(error[window].max()) <= CONSISTENCY_ATOL


def test_chunks_cover_any_length() -> None:
    assert chunk_starts(0) == []
    assert chunk_starts(1) == [0]
    assert chunk_starts(CHUNK) == [0]
    assert chunk_starts(CHUNK + 1) == [0, STEP]
    assert chunk_starts(LENGTH) == [0, STEP, 2 * STEP, 3 * STEP]


@pytest.mark.parametrize("length", [0, 100, CHUNK, LENGTH])
def test_a_mask_of_ones_gives_back_the_input(length: int) -> None:
    """STFT, inverse STFT and the chunks' cross-fade reconstruct exactly, edges included."""
    audio = _audio(length)
    stems = separate(audio, _ones)
    assert float(np.abs(stems.speech - audio).max(initial=0.0)) <= CONSISTENCY_ATOL
    _check_consistent(stems, audio)


def test_a_mask_of_zeros_leaves_everything_in_the_background() -> None:
    audio = _audio()
    stems = separate(audio, lambda specs: 0 * _ones(specs))
    assert float(np.abs(stems.speech).max()) == 0.0
    assert np.array_equal(stems.background, audio)


def test_tiny_export_is_served_at_tiny_only() -> None:
    exporter = SeparationExporter()
    assert exporter.defaults(Preset.TINY)[MODEL].random
    assert exporter.defaults(Preset.SMALL) == {} == exporter.defaults(Preset.LARGE)
    assert MODEL in exporter.optional()


def test_tiny_export_separates_consistently(tmp_path: Path) -> None:
    report = SeparationExporter().export({MODEL: Checkpoint(RANDOM, "MIT")}, Target.CPU, tmp_path)
    assert report.models == [MODEL] and report.max_abs_diff[MODEL] <= 1e-4
    graph = tmp_path / MODEL / "1" / "model.onnx"

    def mask(specs: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[Any] = run_onnx(graph, {"spectrogram": specs})[0]
        assert out.shape == (specs.shape[0], FRAMES, BINS)
        return out.astype(np.float32)

    audio = _audio()
    stems = separate(audio, mask, batch=3)  # batches that split the chunks unevenly
    _check_consistent(stems, audio)
    share = float(np.sum(stems.speech**2) / np.sum(audio**2))
    assert 0.0 < share < 1.5  # a random mask in (0, 1): some, never all, of the energy


def test_nothing_is_exported_without_a_checkpoint(tmp_path: Path) -> None:
    report = SeparationExporter().export({}, Target.CPU, tmp_path)
    assert report.models == [] and "not served" in report.notes[0]
    assert not (tmp_path / MODEL).exists()


def _checkpoint_dir(root: Path, model_type: str = MODEL_TYPE) -> Path:
    from safetensors.torch import save_file

    config = MaskNetConfig(channels=6, blocks=2, bottleneck=24)
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": model_type, **vars(config)}))
    save_file(build(config, seed=5).state_dict(), str(root / "model.safetensors"))
    return root


def test_a_checkpoint_directory_is_exported(tmp_path: Path) -> None:
    source = _checkpoint_dir(tmp_path / "ckpt")
    report = SeparationExporter().export(
        {MODEL: Checkpoint(str(source), "MIT")}, Target.CPU, tmp_path / "repo"
    )
    assert report.models == [MODEL] and report.max_abs_diff[MODEL] <= 1e-4
    assert "2 block(s) x 6 channels" in report.notes[0]


def test_a_checkpoint_of_another_family_is_refused(tmp_path: Path) -> None:
    source = _checkpoint_dir(tmp_path / "ckpt", model_type="vits")
    with pytest.raises(ConfigurationError) as caught:
        SeparationExporter().export(
            {MODEL: Checkpoint(str(source), "MIT")}, Target.CPU, tmp_path / "repo"
        )
    assert caught.value.code == "checkpoint_not_of_family"
