"""The orchestrator's diarization client (``polydub.orchestrator.inference.diarization``) on the
tiny export, its Triton calls answered by onnxruntime in-process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.export.diarization import EMBEDDING
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import ExportReport
from polydub.orchestrator.inference.diarization import DiarizationClient
from tests.speech_audio import FEMALE, MALE, speak

pytestmark = pytest.mark.unit


class LocalInfer:
    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.requests: list[tuple[str, tuple[int, ...]]] = []

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        self.requests.append((model, inputs["waveform"].shape))
        path = self.repository / model / "1" / "model.onnx"
        return dict(zip(outputs, run_onnx(path, inputs, outputs), strict=True))


async def test_client_segment_and_embed(diarization_export: tuple[Path, ExportReport]) -> None:
    repository, _ = diarization_export
    local = LocalInfer(repository)
    client = DiarizationClient(local)
    audio = np.concatenate([speak("First speaker here.", MALE), speak("And me.", FEMALE)] * 8)
    segmentation = await client.segment(audio, step_s=5.0)
    windows = len(segmentation.starts)
    assert windows >= 2 and segmentation.activity.shape == (windows, 589, 3)
    assert set(np.unique(segmentation.activity).tolist()) <= {0.0, 1.0}
    assert segmentation.count.size == segmentation.num_frames
    assert int(segmentation.starts[-1]) + 160000 >= audio.size
    assert all(shape == (1, 1, 160000) for _, shape in local.requests)

    chunks = [audio[:16000], audio[16000:32000], audio[:40000], audio[:100]]
    embeddings = await client.embed(chunks)
    assert embeddings.shape == (4, 256)
    (alone,) = run_onnx(
        repository / EMBEDDING / "1" / "model.onnx",
        {"waveform": audio[None, None, :40000], "weights": np.ones((1, 1), np.float32)},
    )
    np.testing.assert_allclose(embeddings[2], alone[0], atol=1e-5)
    with pytest.raises(InvalidInput):
        await client.embed([np.zeros(0, np.float32)])
    assert (await client.embed([])).shape[0] == 0
