"""Voice activity detection with Silero VAD served by Triton (model ``silero_vad``).

``VadClient.speech_regions(audio16k)`` runs the model over 512-sample windows in chunks of up to
``CHUNK_WINDOWS`` windows, carrying the LSTM state and the 64-sample context from chunk to
chunk, then turns the per-window probabilities into regions with :func:`regions_from_probs`:

1. hysteresis: a window at or above ``threshold`` opens speech; speech continues until the
   probability falls below ``neg_threshold`` (``threshold - 0.15`` unless given);
2. silences shorter than ``min_silence_s`` inside speech are bridged;
3. regions shorter than ``min_speech_s`` are dropped;
4. each region is padded by ``speech_pad_s`` each side (neighbours split a short gap evenly);
5. regions longer than ``max_speech_s`` are cut at their least speech-like window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.serving.names import SAMPLE_RATE, SILERO_VAD

MODEL = SILERO_VAD
WINDOW = 512
CONTEXT = 64
HIDDEN = 128
CHUNK_WINDOWS = 1024  # 32.8 s per request; full chunks of concurrent streams batch together
MIN_CHUNK_WINDOWS = 16  # the last chunk is padded up to a power of two >= this (shape reuse)


class Infer(Protocol):
    """What the clients need from Triton: ``polydub.infra.triton.InferenceClient`` fits."""

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]: ...


@dataclass(frozen=True)
class SpeechRegion:
    start: float  # seconds
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_s: float = 0.25
    min_silence_s: float = 0.3
    speech_pad_s: float = 0.1
    max_speech_s: float = math.inf

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InvalidInput(f"VAD threshold must be in (0, 1), got {self.threshold}")
        if min(self.min_speech_s, self.min_silence_s, self.speech_pad_s) < 0:
            raise InvalidInput("VAD durations must be >= 0")
        if self.max_speech_s <= 2 * WINDOW / SAMPLE_RATE:
            raise InvalidInput(f"max_speech_s too small: {self.max_speech_s}")

    @property
    def off_threshold(self) -> float:
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


def as_audio(audio: NDArray[Any]) -> NDArray[np.float32]:
    """Mono float32 samples in [-1, 1]; anything else is the caller's bug or bad media."""
    array = np.asarray(audio)
    if array.ndim != 1:
        raise InvalidInput(f"expected mono audio (1-D samples), got shape {array.shape}")
    if array.size and not np.all(np.isfinite(array)):
        raise InvalidInput("audio contains NaN or infinite samples")
    return array.astype(np.float32, copy=False)


def regions_from_probs(
    probs: NDArray[np.float32], num_samples: int, options: VadOptions = VadOptions()
) -> list[SpeechRegion]:
    """Speech regions (seconds) from per-window speech probabilities of 512-sample windows."""
    probs = np.asarray(probs, dtype=np.float32)[: math.ceil(num_samples / WINDOW)]
    if probs.size == 0:
        return []
    # 1. hysteresis, in windows
    on, off = options.threshold, options.off_threshold
    speech = np.zeros(probs.size, dtype=bool)
    active = False
    for i, p in enumerate(probs.tolist()):
        active = p >= on or (active and p >= off)
        speech[i] = active
    runs = _runs(speech)  # [start, end) window indices
    # 2. bridge short silences, 3. drop short speech
    min_gap = options.min_silence_s * SAMPLE_RATE / WINDOW
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    min_len = options.min_speech_s * SAMPLE_RATE / WINDOW
    kept = [(s, e) for s, e in merged if e - s >= min_len]
    # 5. split over-long regions at their least speech-like window
    max_len = options.max_speech_s * SAMPLE_RATE / WINDOW
    split: list[tuple[int, int]] = []
    for start, end in kept:
        while end - start > max_len:
            lo, hi = start + int(max_len // 2), start + int(max_len)
            cut = lo + int(np.argmin(probs[lo:hi]))
            split.append((start, cut))
            start = cut
        split.append((start, end))
    # 4. pad in samples, clamped to the audio; neighbours split a gap shorter than two pads
    pad = options.speech_pad_s * SAMPLE_RATE
    spans = [(float(s * WINDOW), float(min(e * WINDOW, num_samples))) for s, e in split]
    bounds = []
    for i, (left, right) in enumerate(spans):
        before = left - spans[i - 1][1] if i else left
        after = spans[i + 1][0] - right if i + 1 < len(spans) else num_samples - right
        grow_before = min(pad, before / 2 if i else before)
        grow_after = min(pad, after / 2 if i + 1 < len(spans) else after)
        bounds.append((left - grow_before, right + max(0.0, grow_after)))
    return [SpeechRegion(round(s / SAMPLE_RATE, 3), round(e / SAMPLE_RATE, 3)) for s, e in bounds]


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def chunk_requests(audio: NDArray[np.float32]) -> list[tuple[NDArray[np.float32], int]]:
    """(chunk audio with its 64-sample context, number of real windows) for each request.

    Full chunks have CHUNK_WINDOWS windows; the last is zero-padded to a power of two windows so
    that short clips of concurrent jobs still share shapes (the model is causal: padding after
    the real windows cannot change their probabilities).
    """
    total = math.ceil(audio.size / WINDOW)
    padded = np.zeros(total * WINDOW, np.float32)
    padded[: audio.size] = audio
    chunks = []
    for first in range(0, total, CHUNK_WINDOWS):
        count = min(CHUNK_WINDOWS, total - first)
        size = count if count == CHUNK_WINDOWS else _bucket(count)
        body = np.zeros(size * WINDOW, np.float32)
        body[: count * WINDOW] = padded[first * WINDOW : (first + count) * WINDOW]
        start = first * WINDOW
        context = padded[start - CONTEXT : start] if first else np.zeros(CONTEXT, np.float32)
        chunks.append((np.concatenate([context, body]), count))
    return chunks


def _bucket(count: int) -> int:
    return min(CHUNK_WINDOWS, max(MIN_CHUNK_WINDOWS, 1 << (count - 1).bit_length()))


class VadClient:
    def __init__(self, client: Infer, *, model: str = MODEL, options: VadOptions = VadOptions()):
        self.client = client
        self.model = model
        self.options = options

    async def speech_probs(self, audio16k: NDArray[Any]) -> NDArray[np.float32]:
        """Speech probability of each 512-sample window (32 ms at 16 kHz)."""
        audio = as_audio(audio16k)
        state = np.zeros((1, 2, HIDDEN), np.float32)
        probs: list[NDArray[np.float32]] = []
        # Chunks of one stream are sequential: each needs the state the previous one left.
        for chunk, count in chunk_requests(audio):
            result = await self.client.infer(
                self.model, {"audio": chunk[None], "state": state}, ["speech_probs", "state_out"]
            )
            probs.append(result["speech_probs"][0, :count].astype(np.float32))
            state = result["state_out"].astype(np.float32)
        return np.concatenate(probs) if probs else np.zeros(0, np.float32)

    async def speech_regions(
        self, audio16k: NDArray[Any], options: VadOptions | None = None
    ) -> list[SpeechRegion]:
        audio = as_audio(audio16k)
        if audio.size == 0:
            return []
        probs = await self.speech_probs(audio)
        return regions_from_probs(probs, audio.size, options or self.options)
