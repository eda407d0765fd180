"""Who speaks when: segmentation + embeddings (Triton) + clustering (here, numpy/scipy).

Two pipelines, chosen by what the model repository serves:

* with pyannote's segmentation (gated on the Hub: served only with HF_TOKEN or when named),
  the flow drawn below;
* without it (the default), the classic VAD + embedding + clustering pipeline: the VAD's speech
  is cut into overlapping ``embed_window_s`` windows every ``embed_step_s``, each is embedded,
  the embeddings clustered, and each frame takes the speaker most of its windows voted for.

    audio ─► segment: 10 s windows every ``step_s`` ─► per window, up to 3 local speakers
          ─► embed each (window, local speaker) with its activity as pooling weights
             (frames where several speakers overlap are left out when enough clean ones remain)
          ─► agglomerative clustering, average linkage on cosine distance: cut at
             ``num_speakers`` clusters when given, else at ``threshold``; tiny clusters join
             their nearest big one
          ─► per window, local speakers are matched to distinct clusters (Hungarian)
          ─► per frame: how many speakers (mean over covering windows), and which (highest
             aggregated activity of each global speaker)
          ─► turns: runs of frames per speaker, short gaps bridged, short blips dropped

Robustness: with speech regions from the VAD, speech frames always get at least one speaker
and non-speech frames none; when the segmentation finds nobody at all (silence, or an untrained
``tiny`` model), the second pipeline runs on the VAD's speech. So the output always covers the speech with ordered, per-speaker non-overlapping turns
whatever the models' quality; how *right* the speaker labels are depends on real weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput, PolydubError
from polydub.orchestrator.inference.diarization import (
    FRAME_STEP,
    DiarizationClient,
    Segmentation,
    frame_times,
    global_frames,
    window_audio,
)
from polydub.orchestrator.inference.vad import SpeechRegion, as_audio
from polydub.serving.names import SAMPLE_RATE


@dataclass(frozen=True)
class SpeakerTurn:
    start: float  # seconds
    end: float
    speaker: str  # SPEAKER_00, SPEAKER_01, ... in order of first appearance


@dataclass(frozen=True)
class DiarizeOptions:
    step_s: float = 5.0  # segmentation window step (windows are 10 s)
    min_embed_s: float = 0.3  # a local speaker needs this much activity to be embedded
    threshold: float = 0.6  # average-linkage cosine distance at which merging stops
    min_cluster_s: float = 1.0  # smaller clusters join their nearest big one (num_speakers unset)
    max_speakers: int = 20
    merge_gap_s: float = 0.3  # bridge same-speaker gaps shorter than this
    min_turn_s: float = 0.1  # drop turns shorter than this
    embed_window_s: float = 1.5  # without segmentation: embedding windows over speech ...
    embed_step_s: float = 0.75  # ... every this many seconds (half-overlapping)


def cluster_embeddings(
    embeddings: NDArray[Any],
    num_speakers: int | None = None,
    *,
    threshold: float = 0.6,
    sizes: NDArray[Any] | None = None,
    min_cluster_size: float = 0.0,
    max_speakers: int | None = None,
) -> NDArray[np.int64]:
    """Agglomerative clustering (average linkage, cosine distance) -> labels 0..K-1.

    ``num_speakers`` fixes K (capped at the number of embeddings); otherwise merging stops at
    ``threshold``, then clusters whose total ``sizes`` (e.g. seconds of speech) are below
    ``min_cluster_size`` are merged into the most similar large cluster. Labels are numbered in
    order of first appearance.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    x = np.asarray(embeddings, np.float64)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    if num_speakers is not None and num_speakers < 1:
        raise InvalidInput(f"num_speakers must be >= 1, got {num_speakers}")
    if n == 1:
        return np.zeros(1, np.int64)
    x = _normalise(x)
    tree = linkage(x, method="average", metric="cosine")
    if num_speakers is not None:
        labels = fcluster(tree, t=min(num_speakers, n), criterion="maxclust")
    else:
        labels = fcluster(tree, t=threshold, criterion="distance")
        if max_speakers is not None and labels.max() > max_speakers:
            labels = fcluster(tree, t=max_speakers, criterion="maxclust")
        weight = np.ones(n) if sizes is None else np.asarray(sizes, np.float64)
        labels = _absorb_small(x, labels, weight, min_cluster_size)
    return _first_appearance(labels)


def _normalise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: NDArray[np.float64] = np.where(norms > 1e-12, x / np.maximum(norms, 1e-12), 0.0)
    out[norms[:, 0] <= 1e-12, 0] = 1.0  # a zero vector: any fixed direction, never NaN
    return out


def _absorb_small(
    x: NDArray[np.float64], labels: NDArray[Any], sizes: NDArray[np.float64], minimum: float
) -> NDArray[Any]:
    ids = np.unique(labels)
    total = np.array([sizes[labels == k].sum() for k in ids])
    large = ids[total >= minimum]
    if large.size == 0 or large.size == ids.size:
        return labels
    centroids = np.stack([x[labels == k].mean(axis=0) for k in large])
    centroids = _normalise(centroids)
    out = labels.copy()
    for k in ids[total < minimum]:
        members = labels == k
        similarity = _normalise(x[members].mean(axis=0, keepdims=True)) @ centroids.T
        out[members] = large[int(np.argmax(similarity))]
    return out


def _first_appearance(labels: NDArray[Any]) -> NDArray[np.int64]:
    mapping: dict[int, int] = {}
    out = np.zeros(labels.size, np.int64)
    for i, label in enumerate(labels.tolist()):
        out[i] = mapping.setdefault(label, len(mapping))
    return out


def speech_mask(regions: Sequence[SpeechRegion], num_frames: int) -> NDArray[np.bool_]:
    centres = frame_times(num_frames)
    mask = np.zeros(num_frames, bool)
    for region in regions:
        mask |= (centres >= region.start) & (centres < region.end)
    return mask


def turns_from_frames(
    active: NDArray[np.bool_],
    duration: float,
    options: DiarizeOptions = DiarizeOptions(),
) -> list[tuple[float, float, int]]:
    """[T, S] per-frame activity -> (start, end, speaker index) turns, sorted by start."""
    step = FRAME_STEP / SAMPLE_RATE
    centres = frame_times(active.shape[0])
    turns: list[tuple[float, float, int]] = []
    for speaker in range(active.shape[1]):
        column = np.concatenate([[False], active[:, speaker], [False]]).astype(np.int8)
        edges = np.diff(column)
        spans: list[list[float]] = []
        for first, last in zip(
            np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True
        ):
            start = max(0.0, float(centres[first]) - step / 2)
            end = min(duration, float(centres[last - 1]) + step / 2)
            if spans and start - spans[-1][1] < options.merge_gap_s:
                spans[-1][1] = end
            else:
                spans.append([start, end])
        turns += [(s, e, speaker) for s, e in spans if e - s >= options.min_turn_s]
    return sorted(turns, key=lambda t: (t[0], t[2]))


async def diarize(
    audio: NDArray[Any],
    num_speakers: int | None = None,
    *,
    client: DiarizationClient,
    speech: Sequence[SpeechRegion] | None = None,
    options: DiarizeOptions = DiarizeOptions(),
) -> list[SpeakerTurn]:
    """Speaker turns of 16 kHz mono ``audio``; ``speech`` (VAD regions) makes it robust."""
    samples = as_audio(audio)
    if num_speakers is not None and num_speakers < 1:
        raise InvalidInput(f"num_speakers must be >= 1, got {num_speakers}")
    frames = global_frames(samples.size)
    if frames == 0:
        return []
    duration = samples.size / SAMPLE_RATE
    seg: Segmentation | None = None  # without it: VAD + embeddings + clustering
    if speech is None or await client.has_segmentation():
        try:
            seg = await client.segment(samples, step_s=options.step_s)
        except PolydubError as exc:
            if exc.code != "model_not_found" or speech is None:
                raise
    if seg is not None:
        in_speech = speech_mask(speech, frames) if speech is not None else seg.speech()
    else:
        in_speech = speech_mask(speech or [], frames)
    if not in_speech.any():
        return []

    keys, masks = _embedding_masks(seg, in_speech, options) if seg is not None else ([], [])
    if seg is not None and keys:
        chunks = [window_audio(samples, int(seg.starts[c])) for c, _ in keys]
        embeddings = await client.embed(chunks, masks)
        sizes = np.array([m.sum() for m in masks]) * FRAME_STEP / SAMPLE_RATE
        labels = cluster_embeddings(
            embeddings,
            num_speakers,
            threshold=options.threshold,
            sizes=sizes,
            min_cluster_size=options.min_cluster_s,
            max_speakers=options.max_speakers,
        )
        active = _frame_speakers(seg, keys, embeddings, labels, in_speech)
    else:
        active = await _sliding_windows(samples, in_speech, num_speakers, client, options)
    turns = turns_from_frames(active, duration, options)
    names: dict[int, str] = {}
    for _, _, k in turns:
        names.setdefault(k, f"SPEAKER_{len(names):02d}")
    return [SpeakerTurn(round(s, 3), round(e, 3), names[k]) for s, e, k in turns]


def _embedding_masks(
    seg: Segmentation, in_speech: NDArray[np.bool_], options: DiarizeOptions
) -> tuple[list[tuple[int, int]], list[NDArray[np.float32]]]:
    """(window, local speaker) pairs worth embedding, with their pooling weights."""
    keys: list[tuple[int, int]] = []
    masks: list[NDArray[np.float32]] = []
    min_frames = options.min_embed_s * SAMPLE_RATE / FRAME_STEP
    per_window = seg.activity.shape[1]
    for c, offset in enumerate(seg.offsets.tolist()):
        speech = np.zeros(per_window, bool)
        visible = in_speech[offset : offset + per_window]
        speech[: visible.size] = visible
        activity = seg.activity[c] > 0
        clean = activity & (activity.sum(axis=1, keepdims=True) == 1)
        for k in range(activity.shape[1]):
            mask = clean[:, k] & speech
            if mask.sum() < min_frames:
                mask = activity[:, k] & speech  # overlapped frames only: use them all
            if mask.sum() >= min_frames:
                keys.append((c, k))
                masks.append(mask.astype(np.float32))
    return keys, masks


def _frame_speakers(
    seg: Segmentation,
    keys: list[tuple[int, int]],
    embeddings: NDArray[np.float32],
    labels: NDArray[np.int64],
    in_speech: NDArray[np.bool_],
) -> NDArray[np.bool_]:
    """[T, K] global activity: local speakers mapped to clusters, aggregated, top-count kept."""
    from scipy.optimize import linear_sum_assignment

    speakers = int(labels.max()) + 1
    x = _normalise(np.asarray(embeddings, np.float64))
    centroids = _normalise(np.stack([x[labels == k].mean(axis=0) for k in range(speakers)]))
    frames = in_speech.size
    score = np.zeros((frames, speakers))
    covered = np.zeros(frames)
    per_window = seg.activity.shape[1]
    by_window: dict[int, list[int]] = {}
    for i, (c, _) in enumerate(keys):
        by_window.setdefault(c, []).append(i)
    for c, offset in enumerate(seg.offsets.tolist()):
        end = min(frames, offset + per_window)
        if end <= offset:
            continue
        covered[offset:end] += 1
        members = by_window.get(c, [])
        if not members:
            continue
        # distinct clusters for the local speakers of one window (they are different people)
        rows, cols = linear_sum_assignment(-(x[members] @ centroids.T))
        if len(rows) < len(members):  # more local speakers than clusters: keep the labels
            rows, cols = np.arange(len(members)), labels[members]
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            k = keys[members[row]][1]
            score[offset:end, col] += seg.activity[c, : end - offset, k]
    score /= np.maximum(covered, 1)[:, None]
    count = np.rint(seg.count).astype(int)
    count = np.where(in_speech, np.maximum(count, 1), 0)
    order = np.argsort(-score, axis=1, kind="stable")
    active = np.zeros((frames, speakers), bool)
    for rank in range(speakers):
        chosen = (rank < count) & ((score[np.arange(frames), order[:, rank]] > 0) | (rank == 0))
        active[np.flatnonzero(chosen), order[chosen, rank]] = True
    # speech frames nobody claimed (score 0 everywhere): the nearest claimed frame's speaker
    claimed = score.max(axis=1) > 0
    orphans = in_speech & ~claimed
    if orphans.any() and claimed.any():
        active[orphans] = False
        anchors = np.flatnonzero(claimed)
        nearest = _nearest(anchors, np.flatnonzero(orphans))
        active[np.flatnonzero(orphans), order[nearest, 0]] = True
    return active


def _nearest(anchors: NDArray[np.int64], queries: NDArray[np.int64]) -> NDArray[np.int64]:
    pos = (
        np.clip(np.searchsorted(anchors, queries), 1, anchors.size - 1)
        if anchors.size > 1
        else None
    )
    if pos is None:
        return np.full(queries.size, anchors[0], np.int64)
    left, right = anchors[pos - 1], anchors[pos]
    result: NDArray[np.int64] = np.where(queries - left <= right - queries, left, right)
    return result


async def _sliding_windows(
    samples: NDArray[np.float32],
    in_speech: NDArray[np.bool_],
    num_speakers: int | None,
    client: DiarizationClient,
    options: DiarizeOptions,
) -> NDArray[np.bool_]:
    """No segmentation (or it heard nobody): embed overlapping windows of each speech run,
    cluster them, and give each speech frame the speaker most of its covering windows got."""
    span = max(1, round(options.embed_window_s * SAMPLE_RATE / FRAME_STEP))
    step = max(1, round(options.embed_step_s * SAMPLE_RATE / FRAME_STEP))
    edges = np.diff(np.concatenate([[0], in_speech.astype(np.int8), [0]]))
    windows: list[tuple[int, int]] = []
    for first, last in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if last - first <= span:
            windows.append((int(first), int(last)))
            continue
        starts = list(range(int(first), int(last) - span + 1, step))
        if starts[-1] + span < last:  # the run's tail gets a window of its own
            starts.append(int(last) - span)
        windows += [(a, a + span) for a in starts]
    chunks = [samples[a * FRAME_STEP : max(b * FRAME_STEP, a * FRAME_STEP + 1)] for a, b in windows]
    embeddings = await client.embed(chunks)
    labels = cluster_embeddings(
        embeddings,
        num_speakers,
        threshold=options.threshold,
        sizes=np.array([b - a for a, b in windows]) * FRAME_STEP / SAMPLE_RATE,
        min_cluster_size=options.min_cluster_s,
        max_speakers=options.max_speakers,
    )
    votes = np.zeros((in_speech.size, int(labels.max()) + 1), np.float32)
    for (a, b), label in zip(windows, labels.tolist(), strict=True):
        votes[a:b, label] += 1.0
    active = np.zeros(votes.shape, bool)
    speech_frames = np.flatnonzero(in_speech)
    active[speech_frames, votes[speech_frames].argmax(axis=1)] = True
    return active
