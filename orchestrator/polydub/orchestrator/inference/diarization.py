"""Speaker segmentation and speaker embeddings served by Triton.

``DiarizationClient.segment(audio)`` slides 10 s windows (``pyannote_segmentation``) over the
audio with overlap, turns each frame's powerset log-probabilities into per-speaker activity
(argmax class -> the set of local speakers it stands for) and aggregates, over the windows that
cover each frame, how many speakers talk. Local speaker indices are per window: identities are
linked across windows by clustering embeddings (``orchestrator/speaker_turns.py``).

``DiarizationClient.embed(chunks, weights)`` returns one embedding per chunk
(``speaker_embedding``); requests go out concurrently in small groups of equal shape so that
Triton's dynamic batcher merges them with other jobs' requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.orchestrator.inference.vad import Infer, as_audio
from polydub.serving.names import PYANNOTE_SEGMENTATION, SAMPLE_RATE, SPEAKER_EMBEDDING

SEGMENTATION_MODEL = PYANNOTE_SEGMENTATION
EMBEDDING_MODEL = SPEAKER_EMBEDDING
WINDOW_SAMPLES = 160000  # 10 s
FRAME_STEP = 270  # samples between segmentation frames (16.875 ms)
FRAME_SIZE = 991  # samples seen by one frame
FRAMES_PER_WINDOW = 589
LOCAL_SPEAKERS = 3
# Powerset classes of segmentation-3.0: {}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}
POWERSET_TO_MULTILABEL = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32
)
MIN_EMBED_SAMPLES = 8000  # 0.5 s: shorter chunks are zero-padded (and the padding weighted 0)


def powerset_to_multilabel(log_probs: NDArray[np.float32]) -> NDArray[np.float32]:
    """[..., 7] powerset scores -> [..., 3] 0/1 activity of each local speaker (hard argmax)."""
    result: NDArray[np.float32] = POWERSET_TO_MULTILABEL[np.argmax(log_probs, axis=-1)]
    return result


def frame_times(num_frames: int) -> NDArray[np.float64]:
    """Centre time (s) of each frame of the global frame grid."""
    centres: NDArray[np.float64] = (
        np.arange(num_frames) * FRAME_STEP + FRAME_SIZE / 2
    ) / SAMPLE_RATE
    return centres


@dataclass(frozen=True)
class Segmentation:
    """Speaker activity of every sliding window, on one global frame grid.

    Window ``c`` starts at sample ``starts[c]`` (a multiple of FRAME_STEP), so its frame ``i`` is
    global frame ``starts[c] // FRAME_STEP + i``.
    """

    num_samples: int
    starts: NDArray[np.int64]  # [C] window start samples
    activity: NDArray[np.float32]  # [C, 589, 3] 0/1 per window, frame and local speaker
    count: NDArray[np.float32]  # [T] mean number of active speakers over the covering windows

    @property
    def num_frames(self) -> int:
        return int(self.count.size)

    @property
    def offsets(self) -> NDArray[np.int64]:
        offsets: NDArray[np.int64] = self.starts // FRAME_STEP
        return offsets

    def speech(self) -> NDArray[np.bool_]:
        """[T] frames where at least half the covering windows hear someone."""
        speech: NDArray[np.bool_] = self.count >= 0.5
        return speech


def window_starts(num_samples: int, step_s: float) -> NDArray[np.int64]:
    """Starts of the 10 s windows: every ~step_s (a multiple of the frame step), the last one
    ending at the end of the audio (one zero-padded window when the audio is shorter)."""
    step = max(1, round(step_s * SAMPLE_RATE / FRAME_STEP)) * FRAME_STEP
    last = math.ceil(max(0, num_samples - WINDOW_SAMPLES) / FRAME_STEP) * FRAME_STEP
    regular = [s for s in range(0, last, step) if s == 0 or s <= last - step // 2]
    return np.array([*regular, last], dtype=np.int64)


def global_frames(num_samples: int) -> int:
    """Frames of the global grid whose centre lies inside the audio."""
    return max(0, math.ceil((num_samples - FRAME_SIZE / 2) / FRAME_STEP))


def window_audio(audio: NDArray[np.float32], start: int) -> NDArray[np.float32]:
    chunk = np.zeros(WINDOW_SAMPLES, np.float32)
    piece = audio[start : start + WINDOW_SAMPLES]
    chunk[: piece.size] = piece
    return chunk


def aggregate_count(
    starts: NDArray[np.int64], activity: NDArray[np.float32], num_frames: int
) -> NDArray[np.float32]:
    total = np.zeros(num_frames, np.float64)
    covered = np.zeros(num_frames, np.float64)
    speakers = activity.sum(axis=2)
    for start, per_frame in zip((starts // FRAME_STEP).tolist(), speakers, strict=True):
        end = min(num_frames, start + per_frame.size)
        if end > start:
            total[start:end] += per_frame[: end - start]
            covered[start:end] += 1
    count: NDArray[np.float32] = (total / np.maximum(covered, 1)).astype(np.float32)
    return count


@runtime_checkable
class ReadyCheck(Protocol):
    """A client that can say whether Triton serves a model (``InferenceClient`` can)."""

    async def is_model_ready(self, model: str) -> bool: ...

    async def is_ready(self) -> bool: ...


# Whether the (gated, optional) segmentation model is served, re-asked at most this often.
SEGMENTATION_CHECK_SECONDS = 60.0


class DiarizationClient:
    def __init__(
        self,
        client: Infer,
        *,
        segmentation_model: str = SEGMENTATION_MODEL,
        embedding_model: str = EMBEDDING_MODEL,
        max_in_flight: int = 16,
        request_batch: int = 4,
    ) -> None:
        self.client = client
        self.segmentation_model = segmentation_model
        self.embedding_model = embedding_model
        self.request_batch = request_batch
        self._limit = asyncio.Semaphore(max_in_flight)
        self._segmentation: tuple[float, bool] | None = None

    async def has_segmentation(self) -> bool:
        """Whether the segmentation model is served (it is optional: gated on the Hub). Asked
        once a minute, so a job without it makes no failing calls; a client that cannot say
        is assumed to serve it (``segment`` then raises ``model_not_found`` if not)."""
        if not isinstance(self.client, ReadyCheck):
            return True
        cached = self._segmentation
        if cached is None or time.monotonic() - cached[0] > SEGMENTATION_CHECK_SECONDS:
            served = await self.client.is_model_ready(self.segmentation_model)
            if not served and not await self.client.is_ready():
                # Triton cannot say now (restarting): not "not served", or every job of the
                # next minute would be diarized without it. Ask again next time.
                return True
            cached = (time.monotonic(), served)
            self._segmentation = cached
        return cached[1]

    async def _infer(
        self, model: str, inputs: dict[str, NDArray[Any]], output: str
    ) -> NDArray[Any]:
        async with self._limit:
            result = await self.client.infer(model, inputs, [output])
        return result[output]

    async def segment(self, audio16k: NDArray[Any], step_s: float = 5.0) -> Segmentation:
        audio = as_audio(audio16k)
        frames = global_frames(audio.size)
        if audio.size == 0:
            empty = np.zeros((0, FRAMES_PER_WINDOW, LOCAL_SPEAKERS), np.float32)
            return Segmentation(0, np.zeros(0, np.int64), empty, np.zeros(0, np.float32))
        starts = window_starts(audio.size, step_s)
        outputs = await asyncio.gather(
            *(
                self._infer(
                    self.segmentation_model,
                    {"waveform": window_audio(audio, int(s))[None, None]},
                    "log_probs",
                )
                for s in starts
            )
        )
        activity = np.stack([powerset_to_multilabel(o[0]) for o in outputs])
        return Segmentation(audio.size, starts, activity, aggregate_count(starts, activity, frames))

    async def embed(
        self,
        chunks: Sequence[NDArray[Any]],
        weights: Sequence[NDArray[Any] | None] | None = None,
    ) -> NDArray[np.float32]:
        """One embedding per chunk ([N, D]); ``weights`` are per-frame pooling weights on any
        grid spanning the chunk (e.g. a speaker's 589 segmentation frames), None = uniform."""
        if weights is not None and len(weights) != len(chunks):
            raise InvalidInput("embed: one weights array per chunk (or none at all)")
        items = [
            _embedding_input(as_audio(c), None if weights is None else weights[i])
            for i, c in enumerate(chunks)
        ]
        if not items:
            return np.zeros((0, 0), np.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (wave, w) in enumerate(items):
            groups.setdefault((wave.size, w.size), []).append(i)
        requests = []
        for members in groups.values():
            for first in range(0, len(members), self.request_batch):
                requests.append(members[first : first + self.request_batch])
        results = await asyncio.gather(
            *(
                self._infer(
                    self.embedding_model,
                    {
                        "waveform": np.stack([items[i][0] for i in req])[:, None, :],
                        "weights": np.stack([items[i][1] for i in req]),
                    },
                    "embedding",
                )
                for req in requests
            )
        )
        out = np.zeros((len(items), results[0].shape[-1]), np.float32)
        for req, result in zip(requests, results, strict=True):
            out[req] = result
        return out


def _embedding_input(
    chunk: NDArray[np.float32], weights: NDArray[Any] | None
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    if chunk.size == 0:
        raise InvalidInput("cannot embed an empty audio chunk")
    w = np.ones(1, np.float32) if weights is None else np.asarray(weights, np.float32).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)) or w.min() < 0:
        raise InvalidInput("embedding weights must be finite, non-negative and non-empty")
    if chunk.size >= MIN_EMBED_SAMPLES:
        return chunk, w
    # Too short for the ResNet's frame grid: pad with silence that the pooling ignores.
    padded = np.zeros(MIN_EMBED_SAMPLES, np.float32)
    padded[: chunk.size] = chunk
    grid = np.arange(100) * MIN_EMBED_SAMPLES / 100  # 100 weight frames over the padded chunk
    resampled = w[np.minimum((grid / chunk.size * w.size).astype(int), w.size - 1)]
    resampled[grid >= chunk.size] = 0.0
    return padded, resampled.astype(np.float32)
