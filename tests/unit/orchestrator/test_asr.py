"""The orchestrator's Whisper client (``polydub.orchestrator.inference.asr``): windowing and merging
maths, input checks, and the client against an in-process stand-in for the ``whisper`` model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.languages import LANGUAGES
from polydub.orchestrator.inference.asr import (
    AsrClient,
    AudioRegion,
    TranscriptSegment,
    as_audio16k,
    cut_regions,
    merge_windows,
    plan_windows,
)

pytestmark = pytest.mark.unit


def test_plan_windows_overlap_and_cover() -> None:
    assert plan_windows(100, window=40, overlap=10) == [(0, 40), (30, 70), (60, 100)]
    assert plan_windows(40, window=40, overlap=10) == [(0, 40)]
    assert plan_windows(0, window=40, overlap=10) == [(0, 0)]
    assert plan_windows(41, window=40, overlap=10) == [(0, 40), (30, 41)]


def _seg(start: float, end: float, text: str = "") -> TranscriptSegment:
    return TranscriptSegment(start, end, text or f"{start}-{end}", -0.1, 0.01)


def test_merge_windows_keeps_each_segment_once_by_midpoint() -> None:
    spans = [(0.0, 30.0), (25.0, 55.0), (50.0, 70.0)]  # owners: [..27.5), [27.5, 52.5), [52.5..
    first = [_seg(0, 10), _seg(20, 27), _seg(26, 30)]  # 26-30: middle 28 -> window 2's
    second = [_seg(25.2, 27.0), _seg(26.0, 30.0), _seg(40, 52), _seg(52, 55)]
    third = [_seg(51, 54), _seg(60, 70)]
    merged = merge_windows(spans, [first, second, third])
    assert [(s.start, s.end) for s in merged] == [
        (0, 10),
        (20, 27),
        (26.0, 30.0),
        (40, 52),
        (51, 54),
        (60, 70),
    ]


def test_as_audio16k_validates_and_resamples() -> None:
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = as_audio16k(tone, 48000)
    assert out.shape == (16000,) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), atol=1e-4)
    with pytest.raises(InvalidInput, match="mono"):
        as_audio16k(np.zeros((2, 10), np.float32))
    with pytest.raises(InvalidInput, match="float"):
        as_audio16k(np.zeros(10, np.int16))
    with pytest.raises(InvalidInput, match="NaN"):
        as_audio16k(np.array([0.0, np.nan], np.float32))


class FakeWhisper:
    """Stands in for the ``whisper`` model: one segment per run of non-zero samples, whose text
    is the run's amplitude; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        audio = inputs["audio"][0]
        language = inputs["language"][0, 0].decode()
        task = inputs["task"][0, 0].decode()
        self.requests.append({"samples": audio.size, "language": language, "task": task})
        segments = []
        loud = np.flatnonzero(np.abs(audio) > 0.075)  # the clips, not the packing's noise fill
        if task != "detect" and loud.size:
            breaks = np.flatnonzero(np.diff(loud) > 1)
            starts = np.concatenate([[loud[0]], loud[breaks + 1]])
            ends = np.concatenate([loud[breaks], [loud[-1]]]) + 1
            for s, e in zip(starts, ends, strict=True):
                segments.append(
                    {
                        "start": s / 16000,
                        "end": e / 16000,
                        "text": f" {audio[s]:.1f}",
                        "tokens": [round(float(audio[s]) * 10)],
                        "avg_logprob": -0.5,
                    }
                )
        tokens = np.array([[s["tokens"][0] for s in segments]], np.int64).reshape(1, -1)
        return {
            "text": np.array([["".join(s["text"] for s in segments).encode()]], np.object_),
            "tokens": tokens,
            "segments": np.array([[json.dumps(segments).encode()]], np.object_),
            "detected_language": np.array([[(language or "fr").encode()]], np.object_),
            "language_probability": np.array([[0.75]], np.float32),
            "avg_logprob": np.array([[-0.5]], np.float32),
            "no_speech_prob": np.array([[0.125]], np.float32),
        }


async def test_client_packs_regions_and_maps_times_back() -> None:
    fake = FakeWhisper()
    client = AsrClient(fake, pack_gap_s=0.5)
    recording = np.zeros(120 * 16000, np.float32)
    spans = [(3.0, 11.0), (20.0, 26.0), (40.0, 49.0), (60.0, 70.0), (80.0, 81.0)]
    for k, (start, end) in enumerate(spans):  # each region one constant amplitude
        recording[int(start * 16000) : int(end * 16000)] = 0.1 * (k + 1)

    class Span:
        def __init__(self, start: float, end: float) -> None:
            self.start, self.end = start, end

    regions = cut_regions(recording, [Span(s, e) for s, e in spans])
    results = await client.transcribe_packed(regions)
    # Detected once (fr), then 8+6+9 s in one window and 10+1 s in a second one.
    assert [r["task"] for r in fake.requests] == ["detect", "transcribe", "transcribe"]
    assert [r["language"] for r in fake.requests] == ["", "fr", "fr"]
    assert fake.requests[1]["samples"] == int((8 + 0.5 + 6 + 0.5 + 9) * 16000)
    assert len(results) == 5
    for k, ((start, end), result) in enumerate(zip(spans, results, strict=True)):
        assert result.language == "fra" and result.language_probability == 0.75
        assert result.duration == pytest.approx(end - start)
        [segment] = result.segments
        assert segment.start == pytest.approx(start, abs=1e-6)
        assert segment.end == pytest.approx(end, abs=1e-6)
        assert segment.text == f" {0.1 * (k + 1):.1f}"
        assert segment.no_speech_prob == 0.125
        assert result.tokens == (k + 1,)


async def test_client_chunks_long_audio_and_merges_by_time() -> None:
    fake = FakeWhisper()
    client = AsrClient(fake, overlap_s=5.0)
    audio = np.zeros(70 * 16000, np.float32)
    for k, (start, end) in enumerate([(1.0, 4.0), (26.0, 28.0), (40.0, 44.0), (60.0, 69.0)]):
        audio[int(start * 16000) : int(end * 16000)] = 0.1 * (k + 1)
    result = await client.transcribe(audio, language="deu")
    # windows [0, 30) [25, 55) [50, 70): the 26-28 s region is seen twice, kept once.
    assert [r["samples"] for r in fake.requests] == [480000, 480000, 320000]
    assert {r["language"] for r in fake.requests} == {"de"}
    assert result.language == "deu" and result.duration == 70.0
    assert [(round(s.start, 3), round(s.end, 3), s.text) for s in result.segments] == [
        (1.0, 4.0, " 0.1"),
        (26.0, 28.0, " 0.2"),
        (40.0, 44.0, " 0.3"),
        (60.0, 69.0, " 0.4"),
    ]
    assert result.text == "0.1 0.2 0.3 0.4"

    fake.requests.clear()
    detected = await client.transcribe(audio[: 31 * 16000])  # no language: detect first
    assert [r["task"] for r in fake.requests] == ["detect", "transcribe", "transcribe"]
    assert detected.language == "fra" and detected.language_probability == 0.75


async def test_client_rejects_unknown_language_listing_supported() -> None:
    client = AsrClient(FakeWhisper())
    with pytest.raises(InvalidInput) as error:
        await client.transcribe(np.zeros(16000, np.float32), language="xx")
    assert "unsupported language 'xx'" in error.value.message
    assert "eng" in error.value.message and error.value.detail == {"supported": sorted(LANGUAGES)}
    with pytest.raises(InvalidInput, match="unknown task"):
        await client.transcribe(np.zeros(16000, np.float32), task="summarize")
    empty = await client.transcribe_packed([])
    assert empty == []
    [silent] = await client.transcribe_packed([AudioRegion(5.0, np.zeros(0, np.float32))])
    assert silent.segments == [] and silent.duration == 0.0 and silent.language == "fra"
