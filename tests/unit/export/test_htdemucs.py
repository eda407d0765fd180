"""HT-Demucs in the separation family: its STFT / iSTFT in numpy against the model's own, the
checkpoint format and how ``--model separation=PATH`` picks it, and the export's parity."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export import htdemucs
from polydub.export.onnx_tools import run_onnx
from polydub.export.separation import SeparationExporter
from polydub.export.spec import RANDOM, Checkpoint, Target
from polydub.serving import htdemucs as front
from polydub.serving.names import HtDemucsIn
from polydub.serving.separation import CONSISTENCY_ATOL

pytestmark = pytest.mark.unit
SECONDS = 0.5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return htdemucs.tiny_checkpoint(tmp_path_factory.mktemp("ht") / "tiny.th", seconds=SECONDS)


def _stereo(length: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    out: NDArray[np.float32] = (0.2 * rng.standard_normal((2, length))).astype(np.float32)
    return out


def test_the_stft_and_istft_are_the_models_own(tiny: Path) -> None:
    model = htdemucs.load(tiny)
    chunk = _stereo(int(model.segment * model.samplerate))
    z = model._spec(torch.from_numpy(chunk)[None])
    ours = front.spectrogram(chunk)
    assert np.abs(model._magnitude(z)[0].numpy() - ours).max() <= 1e-5
    back = model._ispec(model._mask(z, model._magnitude(z)[:, None]), chunk.shape[1])
    assert np.abs(back[0, 0].numpy() - front.waveform(ours, chunk.shape[1])).max() <= 1e-5


def test_chunks_cover_any_length_with_fades_summing_to_one() -> None:
    chunking = front.Chunking(2, 4000)
    assert chunking.starts(0) == [] and chunking.starts(10) == [0]
    starts = chunking.starts(10000)
    assert starts == [0, 3000, 6000]  # the last one ends at 10000
    weight = np.zeros(10000)
    for s in starts:
        n = min(chunking.length, 10000 - s)
        weight[s : s + n] += chunking.fade()[:n]
    assert weight.min() > 0.0  # every sample has a chunk that weighs it


def test_stems_sum_back_with_any_network_output() -> None:
    chunking = front.Chunking(2, 2048)
    rng = np.random.default_rng(1)

    def noise(
        waves: NDArray[np.float32], specs: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        return (
            rng.standard_normal(specs.shape).astype(np.float32),
            rng.standard_normal(waves.shape).astype(np.float32),
        )

    for audio in (_stereo(5000)[0], _stereo(7000).T.copy()):
        stems = front.separate(audio, noise, chunking)
        assert stems.speech.shape == audio.shape
        assert np.abs(stems.speech + stems.background - audio).max() <= CONSISTENCY_ATOL


def test_a_demucs_checkpoint_is_found_as_a_file_or_in_a_directory(
    tiny: Path, tmp_path: Path
) -> None:
    assert htdemucs.checkpoint_file(Checkpoint(str(tiny), "MIT")) == tiny
    assert htdemucs.checkpoint_file(Checkpoint(str(tiny.parent), "MIT")) == tiny
    mask_net = tmp_path / "mask-net"
    mask_net.mkdir()
    (mask_net / "config.json").write_text(json.dumps({"model_type": "polydub-mask-net"}))
    assert htdemucs.checkpoint_file(Checkpoint(str(mask_net), "MIT")) is None
    assert htdemucs.checkpoint_file(Checkpoint(RANDOM, "MIT")) is None
    # A Hub id is looked up on the Hub: test_htdemucs_hub.py, against the fake one.
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.th", "b.th"):
        (two / name).write_bytes(tiny.read_bytes())
    with pytest.raises(ConfigurationError) as error:
        htdemucs.checkpoint_file(Checkpoint(str(two), "MIT"))
    assert error.value.code == "checkpoint_ambiguous"


def test_a_checkpoint_that_unpickles_anything_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.th"
    # What a hostile file would run on load: refused by weights_only before it can.
    path.write_bytes(pickle.dumps({"klass": print, "args": (), "kwargs": {}, "state": {}}))
    with pytest.raises(ConfigurationError) as error:
        htdemucs.load(path)
    assert error.value.code == "checkpoint_not_of_family"
    torch.save({"klass": None, "args": (), "kwargs": {}, "state": {}}, tmp_path / "other.th")
    with pytest.raises(ConfigurationError, match="not an HT-Demucs checkpoint"):
        htdemucs.load(tmp_path / "other.th")


def test_export_picks_htdemucs_and_matches_the_pytorch_model(tiny: Path, tmp_path: Path) -> None:
    report = SeparationExporter().export(
        {"separation": Checkpoint(str(tiny.parent), "MIT")}, Target.CPU, tmp_path
    )
    assert report.models == [htdemucs.MODEL] and report.precision == {htdemucs.MODEL: "fp32"}
    assert report.retired == ["separation"]  # the mask net, if an earlier export served it
    assert report.max_abs_diff[htdemucs.MODEL] <= htdemucs.FP32_RTOL
    graph = tmp_path / htdemucs.MODEL / "1" / "model.onnx"
    model = htdemucs.load(tiny)
    chunking = front.Chunking(2, int(model.segment * model.samplerate))
    chunk = _stereo(chunking.length, seed=4)
    feeds = {
        str(HtDemucsIn.WAVEFORM): chunk[None],
        str(HtDemucsIn.SPECTROGRAM): front.spectrogram(chunk)[None],
    }
    spec, wave = run_onnx(graph, feeds)
    served = front.speech_of(spec[0], wave[0], chunking.length)
    with torch.no_grad():
        expected = model(torch.from_numpy(chunk)[None])[0, model.sources.index("vocals")].numpy()
    assert np.abs(served - expected).max() <= htdemucs.END_TO_END_RTOL * np.abs(expected).max()
