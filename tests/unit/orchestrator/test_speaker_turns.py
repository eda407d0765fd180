"""Clustering on synthetic embeddings, and the diarize pipeline logic with ideal fake models."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import ConfigurationError, InvalidInput
from polydub.orchestrator.inference.diarization import (
    FRAME_SIZE,
    FRAME_STEP,
    DiarizationClient,
    global_frames,
    powerset_to_multilabel,
    window_starts,
)
from polydub.orchestrator.inference.vad import SpeechRegion
from polydub.orchestrator.speaker_turns import (
    DiarizeOptions,
    SpeakerTurn,
    cluster_embeddings,
    diarize,
    turns_from_frames,
)

pytestmark = pytest.mark.unit
SR = 16000


def _blobs(
    counts: Sequence[int], dim: int = 32, spread: float = 0.15, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(counts), dim))
    points, truth = [], []
    for k, n in enumerate(counts):
        points.append(
            centres[k]
            + spread * np.linalg.norm(centres[k]) / np.sqrt(dim) * rng.standard_normal((n, dim))
        )
        truth += [k] * n
    order = rng.permutation(sum(counts))
    return np.concatenate(points)[order], np.array(truth)[order]


def _same_partition(a: NDArray[np.int64], b: NDArray[np.int64]) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_threshold_finds_the_number_of_speakers() -> None:
    x, truth = _blobs([12, 9, 7])
    labels = cluster_embeddings(x, threshold=0.6)
    assert _same_partition(labels, truth)
    assert labels[0] == 0 and set(labels.tolist()) == {0, 1, 2}  # numbered by first appearance


def test_given_number_of_speakers_is_honoured() -> None:
    x, truth = _blobs([10, 10, 10])
    assert len(set(cluster_embeddings(x, num_speakers=2).tolist())) == 2
    assert _same_partition(cluster_embeddings(x, num_speakers=3), truth)
    assert set(cluster_embeddings(x[:2], num_speakers=5).tolist()) == {0, 1}  # capped at N


def test_small_clusters_join_their_nearest_big_one() -> None:
    x, truth = _blobs([10, 10, 1], seed=3)
    sizes = np.where(truth == 2, 0.3, 2.0)  # the lone point is 0.3 s of speech
    labels = cluster_embeddings(x, threshold=0.6, sizes=sizes, min_cluster_size=1.0)
    assert len(set(labels.tolist())) == 2
    assert _same_partition(labels[truth != 2], truth[truth != 2])
    # max_speakers caps the count when the threshold would give more
    assert len(set(cluster_embeddings(x, threshold=0.01, max_speakers=4).tolist())) == 4


def test_degenerate_inputs() -> None:
    assert cluster_embeddings(np.zeros((0, 8))).size == 0
    assert cluster_embeddings(np.ones((1, 8))).tolist() == [0]
    assert cluster_embeddings(np.zeros((3, 8))).tolist() == [0, 0, 0]  # zero vectors: no NaN
    with pytest.raises(InvalidInput):
        cluster_embeddings(np.ones((3, 8)), num_speakers=0)


def test_powerset_and_window_grid() -> None:
    log_probs = np.log(np.eye(7, dtype=np.float32) * 0.9 + 0.01)
    assert powerset_to_multilabel(log_probs).tolist() == [
        [0, 0, 0],
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [1, 1, 0],
        [1, 0, 1],
        [0, 1, 1],
    ]
    starts = window_starts(25 * SR, step_s=5.0)
    assert starts.tolist() == [0, 79920, 159840, 240030] and all(
        s % FRAME_STEP == 0 for s in starts
    )
    assert window_starts(3 * SR, 5.0).tolist() == [0]
    assert global_frames(0) == 0 and global_frames(160000) == 591


def test_turns_bridge_gaps_and_drop_blips() -> None:
    active = np.zeros((200, 2), bool)
    active[10:50, 0] = True
    active[55:90, 0] = True  # 4 frames (68 ms) gap: bridged
    active[120:122, 1] = True  # 2 frames (34 ms): dropped
    active[130:180, 1] = True
    turns = turns_from_frames(active, duration=4.0)
    assert [(t[2]) for t in turns] == [0, 1]
    step = FRAME_STEP / SR
    assert turns[0][0] == pytest.approx((10 * FRAME_STEP + FRAME_SIZE / 2) / SR - step / 2)
    assert turns[0][1] == pytest.approx((89 * FRAME_STEP + FRAME_SIZE / 2) / SR + step / 2)


def _pitch(x: NDArray[np.float32]) -> float:
    """Zero-crossing pitch of a pure tone (the fake models' only 'feature')."""
    if x.size < 2 or np.sqrt(np.mean(x**2)) < 0.01:
        return 0.0
    return float(np.sum(np.abs(np.diff(np.signbit(x).astype(np.int8))))) / 2 / (x.size / SR)


class IdealModels:
    """Fake Triton: segmentation labels frames by pitch (local speaker 0 low, 1 high), the
    embedding is one-hot on the masked audio's pitch. Tests the pipeline logic, not models."""

    def __init__(self, silent_segmentation: bool = False) -> None:
        self.silent = silent_segmentation
        self.calls: dict[str, int] = {}

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        self.calls[model] = self.calls.get(model, 0) + 1
        wave = inputs["waveform"][:, 0]
        if model == "pyannote_segmentation":
            out = np.full((wave.shape[0], 589, 7), -10.0, np.float32)
            for b, i in itertools.product(range(wave.shape[0]), range(589)):
                pitch = _pitch(wave[b, i * FRAME_STEP : i * FRAME_STEP + FRAME_SIZE])
                cls = 0 if self.silent or pitch == 0 else (1 if pitch < 165 else 2)
                out[b, i, cls] = 0.0
            return {"log_probs": out}
        weights = inputs["weights"]
        emb = np.zeros((wave.shape[0], 4), np.float32)
        for b in range(wave.shape[0]):
            grid = (np.arange(wave.shape[1]) * weights.shape[1] // wave.shape[1]).astype(int)
            voiced = wave[b][weights[b][grid] > 0]
            emb[b, 0 if _pitch(voiced) < 165 else 1] = 1.0
        return {"embedding": emb}


def _tones(spans: list[tuple[float, float, float]], duration: float) -> NDArray[np.float32]:
    audio = np.zeros(int(duration * SR), np.float32)
    for start, end, freq in spans:
        t = np.arange(int((end - start) * SR)) / SR
        audio[int(start * SR) : int(start * SR) + t.size] = 0.3 * np.sin(2 * np.pi * freq * t)
    return audio


SPANS = [(1.0, 4.0, 110.0), (5.0, 8.0, 220.0), (9.0, 11.0, 110.0)]


async def test_diarize_with_ideal_models() -> None:
    fake = IdealModels()
    turns = await diarize(_tones(SPANS, 12.0), client=DiarizationClient(fake))
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    for turn, (start, end, _) in zip(turns, SPANS, strict=True):
        assert turn.start == pytest.approx(start, abs=0.08)
        assert turn.end == pytest.approx(end, abs=0.08)
    assert fake.calls["pyannote_segmentation"] == 2  # 12 s: windows at 0 s and 2 s
    # num_speakers=1 forces one label
    one = await diarize(_tones(SPANS, 12.0), 1, client=DiarizationClient(IdealModels()))
    assert {t.speaker for t in one} == {"SPEAKER_00"} and len(one) == 3


async def test_fallback_when_segmentation_hears_nobody() -> None:
    speech = [SpeechRegion(s, e) for s, e, _ in SPANS]
    client = DiarizationClient(IdealModels(silent_segmentation=True))
    turns = await diarize(_tones(SPANS, 12.0), client=client, speech=speech)
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    for turn, (start, end, _) in zip(turns, SPANS, strict=True):
        assert turn.start == pytest.approx(start, abs=0.05)
        assert turn.end == pytest.approx(end, abs=0.05)


class EmbeddingOnly(IdealModels):
    """A repository without pyannote segmentation (the default: it is gated): Triton answers
    "unknown model" for it, as ``polydub.errors.classify`` maps it."""

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        if model == "pyannote_segmentation":
            raise ConfigurationError("unknown model", code="model_not_found")
        return await super().infer(model, inputs, outputs)


async def test_without_segmentation_vad_embeddings_and_clustering() -> None:
    spans = [(1.0, 4.0, 110.0), (4.3, 8.0, 220.0), (9.0, 11.0, 110.0)]  # a quick turn at 4.0 s
    speech = [SpeechRegion(1.0, 8.0), SpeechRegion(9.0, 11.0)]  # VAD joins the first two
    fake = EmbeddingOnly()
    turns = await diarize(_tones(spans, 12.0), client=DiarizationClient(fake), speech=speech)
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    # The change of speaker inside one VAD region is found to within a window (1.5 s, every
    # 0.75 s): the resolution of the embedding-only pipeline.
    assert turns[0].end == pytest.approx(4.15, abs=0.75)
    assert turns[1].start == pytest.approx(4.15, abs=0.75)
    assert turns[2].start == pytest.approx(9.0, abs=0.05)
    assert fake.calls["speaker_embedding"] >= 1
    # Without VAD regions there is nothing to embed: the missing model is the error.
    with pytest.raises(ConfigurationError):
        await diarize(_tones(spans, 12.0), client=DiarizationClient(EmbeddingOnly()))


class NoSegmentationServed(EmbeddingOnly):
    """As Triton says: the segmentation model is not ready (not in the repository)."""

    async def is_model_ready(self, model: str) -> bool:
        return model != "pyannote_segmentation"

    async def is_ready(self) -> bool:
        return True


async def test_a_client_that_knows_skips_the_missing_model() -> None:
    speech = [SpeechRegion(s, e) for s, e, _ in SPANS]
    fake = NoSegmentationServed()
    client = DiarizationClient(fake)
    turns = await diarize(_tones(SPANS, 12.0), client=client, speech=speech)
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    await diarize(_tones(SPANS, 12.0), client=client, speech=speech)
    assert "pyannote_segmentation" not in fake.calls  # no failing call, not even the first


async def test_empty_and_silent_audio() -> None:
    client = DiarizationClient(IdealModels())
    assert await diarize(np.zeros(0, np.float32), client=client) == []
    assert await diarize(np.zeros(3 * SR, np.float32), client=client) == []
    assert await diarize(np.zeros(3 * SR, np.float32), client=client, speech=[]) == []
    with pytest.raises(InvalidInput):
        await diarize(np.zeros(SR, np.float32), 0, client=client)


def test_speaker_turn_is_plain_data() -> None:
    assert SpeakerTurn(0.0, 1.0, "SPEAKER_00").speaker == "SPEAKER_00"
    assert DiarizeOptions().step_s == 5.0
