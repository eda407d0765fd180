"""The orchestrator's VAD client (``polydub.orchestrator.inference.vad``): real speech found through
the Silero export (run by onnxruntime in-process), chunking with carried state, and the region
rules (hysteresis, minimum speech and silence, padding, maximum length)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import ExportReport
from polydub.export.vad import original_probs, source_onnx
from polydub.orchestrator.inference.vad import (
    CHUNK_WINDOWS,
    SpeechRegion,
    VadClient,
    VadOptions,
    chunk_requests,
    regions_from_probs,
)
from tests.speech_audio import FEMALE, MALE, speak, with_gaps

pytestmark = pytest.mark.unit


class LocalInfer:
    """In-process onnxruntime with the InferenceClient.infer signature."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.calls = 0

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        self.calls += 1
        path = self.repository / model / "1" / "model.onnx"
        return dict(zip(outputs, run_onnx(path, inputs, outputs), strict=True))


async def test_chunked_stream_carries_state(vad_export: tuple[Path, ExportReport]) -> None:
    repository, _ = vad_export
    rng = np.random.default_rng(1)
    speech = speak("A longer sentence, spoken to fill the first chunk and spill over.", FEMALE)
    reps = int(np.ceil((CHUNK_WINDOWS + 300) * 512 / (speech.size + 8000)))
    parts = [np.concatenate([speech, 0.001 * rng.standard_normal(8000)]) for _ in range(reps)]
    audio = np.concatenate(parts).astype(np.float32)
    chunks = chunk_requests(audio)
    assert len(chunks) == 2 and chunks[0][1] == CHUNK_WINDOWS
    assert chunks[1][0].size == 64 + 512 * 512  # padded up to a power of two of windows
    np.testing.assert_array_equal(
        chunks[1][0][:64], audio[CHUNK_WINDOWS * 512 - 64 : CHUNK_WINDOWS * 512]
    )
    local = LocalInfer(repository)
    probs = await VadClient(local).speech_probs(audio)
    assert local.calls == 2 and probs.size == int(np.ceil(audio.size / 512))
    padded = np.concatenate([audio, np.zeros(probs.size * 512 - audio.size, np.float32)])
    np.testing.assert_allclose(probs, original_probs(source_onnx(), padded), atol=1e-4)


async def test_regions_cover_espeak_speech_and_not_silence(
    vad_export: tuple[Path, ExportReport],
) -> None:
    repository, _ = vad_export
    parts = [
        speak("The quick brown fox jumps over the lazy dog.", MALE),
        speak("Good morning, how are you today?", FEMALE),
        speak("Silence follows this sentence.", MALE),
    ]
    audio, spans = with_gaps(parts, gap_s=1.5)
    regions = await VadClient(LocalInfer(repository)).speech_regions(audio)
    assert len(regions) == len(spans)
    for region, (start, end) in zip(regions, spans, strict=True):
        assert region.start == pytest.approx(start, abs=0.2)
        assert region.end == pytest.approx(end, abs=0.2)
    # silence: no region reaches into a gap (or the lead-in) beyond the tolerance
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert all(r.end <= end + 0.2 or r.start >= start - 0.2 for r in regions)
    assert regions[0].start >= spans[0][0] - 0.2


async def test_zero_length_and_silence(vad_export: tuple[Path, ExportReport]) -> None:
    repository, _ = vad_export
    client = VadClient(LocalInfer(repository))
    assert await client.speech_regions(np.zeros(0, np.float32)) == []
    assert await client.speech_regions(np.zeros(16000 * 3, np.float32)) == []
    assert await client.speech_regions(np.zeros(100, np.float32)) == []  # shorter than a window
    with pytest.raises(InvalidInput):
        await client.speech_regions(np.zeros((2, 100), np.float32))


def _probs(pattern: str) -> NDArray[np.float32]:
    """One window per character: '#' speech (0.9), '-' silence (0.05), '~' in between (0.4)."""
    return np.array([{"#": 0.9, "-": 0.05, "~": 0.4}[c] for c in pattern], np.float32)


def test_hysteresis_min_silence_min_speech_and_padding() -> None:
    w = 512 / 16000  # seconds per window
    options = VadOptions(min_speech_s=3 * w, min_silence_s=4 * w, speech_pad_s=0.0)
    # '~' keeps speech going after it started (>= 0.35) but does not start it
    probs = _probs("--~~####~~~--##---------#-----####------")
    regions = regions_from_probs(probs, probs.size * 512, options)
    # the 2-window silence after '~~~' is bridged; the lone '#' is too short
    assert regions == [
        SpeechRegion(round(4 * w, 3), round(15 * w, 3)),
        SpeechRegion(round(30 * w, 3), round(34 * w, 3)),
    ]
    padded = regions_from_probs(
        probs, probs.size * 512, VadOptions(**{**options.__dict__, "speech_pad_s": 0.1})
    )
    assert padded[0].start == pytest.approx(4 * w - 0.1, abs=1e-3)
    assert padded[1].end == pytest.approx(34 * w + 0.1, abs=1e-3)


def test_padding_splits_short_gaps_and_clamps_to_audio() -> None:
    w = 512 / 16000
    probs = _probs("####---####")
    options = VadOptions(min_speech_s=0.0, min_silence_s=0.0, speech_pad_s=0.5)
    first, second = regions_from_probs(probs, probs.size * 512 - 100, options)
    assert first.start == 0.0 and second.end == pytest.approx(
        (probs.size * 512 - 100) / 16000, abs=1e-3
    )
    assert first.end == pytest.approx(second.start) == pytest.approx(5.5 * w, abs=1e-3)


def test_max_speech_splits_at_the_least_speech_like_window() -> None:
    w = 512 / 16000
    probs = np.full(100, 0.9, np.float32)
    probs[70] = 0.6  # still speech, but the weakest window
    options = VadOptions(min_speech_s=0.0, speech_pad_s=0.0, max_speech_s=80 * w)
    regions = regions_from_probs(probs, 100 * 512, options)
    assert [(r.start, r.end) for r in regions] == [(0.0, round(70 * w, 3)), (round(70 * w, 3), 3.2)]


def test_invalid_options() -> None:
    with pytest.raises(InvalidInput):
        VadOptions(threshold=1.5)
    with pytest.raises(InvalidInput):
        VadOptions(min_speech_s=-1)
