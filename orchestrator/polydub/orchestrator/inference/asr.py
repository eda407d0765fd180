"""Speech recognition with Whisper served by Triton (BLS model ``whisper``).

One Triton request is one window of at most 30 s: the ``whisper`` model decodes every window of
a dynamic batch together (one encoder call, one batched greedy loop with a KV cache), so the
windows of one call and those of concurrent jobs share batches. This client only cuts audio
into windows and puts the timestamps back:

* ``transcribe``: audio longer than 30 s is cut into 30 s windows overlapping by
  ``overlap_s``; each window owns the time up to the middle of its overlaps, and a segment is kept
  from the window that owns its midpoint.
* ``transcribe_packed``: short speech regions (VAD output, typically 5-10 s) are packed
  back-to-back, 1 s of silence between them, into ~30 s windows. Whisper's encoder always
  processes 30 s, so a 6 s region sent alone wastes 80 % of it; packed, four or five regions
  cost one window. Segment times are mapped back to each region's own clock; a region whose
  words Whisper may have merged with a neighbour's is decoded again alone (``asr_packing``).

Language codes are polydub's canonical ISO 639-3 codes in and out; Whisper's codes stay inside.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.infra.triton import Deadline, WorkDeadlines
from polydub.languages import from_whisper, get_language
from polydub.orchestrator.inference.asr_packing import (
    PACK_GAP_S,
    WINDOW_S,
    PackedRegion,
    neighbours,
    pack_regions,
    unpack_window,
)
from polydub.orchestrator.inference.asr_packing import unpack_segments as unpack_segments
from polydub.serving.names import SAMPLE_RATE, WHISPER, WhisperOut
from polydub.settings import get_settings

MODEL = WHISPER
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)
OVERLAP_S = 5.0
TASKS = ("transcribe", "translate")
OUTPUTS = list(WhisperOut)


class Infer(Protocol):
    """What the client needs from Triton: ``polydub.infra.triton.InferenceClient`` fits."""

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]: ...


class Span(Protocol):
    """Anything with a start and an end in seconds, e.g. a VAD ``SpeechRegion``."""

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...


@dataclass(frozen=True)
class TranscriptSegment:
    start: float  # seconds
    end: float
    text: str
    avg_logprob: float  # mean log-probability of the segment's tokens
    no_speech_prob: float  # of the window the segment comes from
    tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Transcription:
    language: str  # ISO 639-3
    language_probability: float  # the model's probability of that language
    duration: float  # seconds of audio
    segments: list[TranscriptSegment] = field(default_factory=list)
    tokens: tuple[int, ...] = ()  # sampled token ids (whole windows; packed: its segments')

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


@dataclass(frozen=True)
class WindowResult:
    """One window as the ``whisper`` model returns it; times relative to the window start."""

    text: str
    tokens: tuple[int, ...]
    segments: list[TranscriptSegment]
    language: str  # Whisper code
    language_probability: float
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class AudioRegion:
    """A piece of a longer recording: 16 kHz samples starting at ``start`` seconds."""

    start: float
    audio: NDArray[np.float32]

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE


# ------------------------------------------------------------------------------ audio


def as_audio16k(audio: NDArray[Any], sample_rate: int = SAMPLE_RATE) -> NDArray[np.float32]:
    """Mono float32 at 16 kHz; other rates are resampled (band-limited, FFT)."""
    array = np.asarray(audio)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise InvalidInput(f"audio must be mono (1-D), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInput(f"audio must be float PCM, got {array.dtype}")
    if sample_rate <= 0:
        raise InvalidInput(f"invalid sample rate {sample_rate}")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise InvalidInput("audio contains NaN or infinite samples")
    if sample_rate == SAMPLE_RATE or array.size == 0:
        return np.ascontiguousarray(array)
    n_out = max(1, round(array.size * SAMPLE_RATE / sample_rate))
    spectrum = np.fft.rfft(array.astype(np.float64))
    bins = n_out // 2 + 1
    if bins <= spectrum.size:
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - spectrum.size, spectrum.dtype)])
    out = np.fft.irfft(spectrum, n=n_out) * (n_out / array.size)
    return out.astype(np.float32)


def whisper_code(language: str | None) -> str | None:
    """Canonical code -> Whisper's; unknown codes raise InvalidInput listing the supported."""
    return None if language is None else get_language(language).whisper


def canonical_code(whisper: str) -> str:
    lang = from_whisper(whisper)
    if lang is None:
        raise InvalidInput(
            f"the audio's language {whisper!r} (Whisper code) is not supported",
            code="unsupported_language",
        )
    return lang.code


# --------------------------------------------------------------------- long audio: windows


def plan_windows(
    n_samples: int, window: int = WINDOW_SAMPLES, overlap: int = int(OVERLAP_S * SAMPLE_RATE)
) -> list[tuple[int, int]]:
    """[start, end) sample ranges of <= ``window`` samples, consecutive ones overlapping."""
    if not 0 <= overlap < window:
        raise ValueError("overlap must be in [0, window)")
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + window, n_samples)
        spans.append((start, end))
        if end >= n_samples:
            return spans
        start += window - overlap


def merge_windows(
    spans_s: Sequence[tuple[float, float]], segments: Sequence[Sequence[TranscriptSegment]]
) -> list[TranscriptSegment]:
    """Segments of overlapping windows (absolute times) -> one timeline without duplicates.

    Window k owns [middle of its overlap with k-1, middle of its overlap with k+1); each segment
    is kept from the window that owns its midpoint.
    """
    merged: list[TranscriptSegment] = []
    for k, window_segments in enumerate(segments):
        low = -math.inf if k == 0 else (spans_s[k][0] + spans_s[k - 1][1]) / 2
        high = math.inf if k == len(spans_s) - 1 else (spans_s[k + 1][0] + spans_s[k][1]) / 2
        for seg in window_segments:
            middle = (seg.start + seg.end) / 2
            if low <= middle < high:
                merged.append(seg)
    merged.sort(key=lambda s: (s.start, s.end))
    return merged


# ----------------------------------------------------------------- short regions: packing


def cut_regions(audio16k: NDArray[Any], spans: Sequence[Span]) -> list[AudioRegion]:
    """The pieces of a recording that ``spans`` (e.g. VAD regions, in seconds) cover."""
    audio = as_audio16k(audio16k)
    regions = []
    for span in spans:
        start = max(0, round(span.start * SAMPLE_RATE))
        end = min(audio.size, round(span.end * SAMPLE_RATE))
        regions.append(AudioRegion(start / SAMPLE_RATE, audio[start : max(start, end)]))
    return regions


def _shift(segments: Sequence[TranscriptSegment], offset: float) -> list[TranscriptSegment]:
    return [
        TranscriptSegment(
            s.start + offset, s.end + offset, s.text, s.avg_logprob, s.no_speech_prob, s.tokens
        )
        for s in segments
    ]


# ------------------------------------------------------------------------------ client


class AsrClient:
    def __init__(
        self,
        client: Infer,
        *,
        model: str = MODEL,
        overlap_s: float = OVERLAP_S,
        pack_gap_s: float = PACK_GAP_S,
        max_new_tokens: int = 0,
        min_new_tokens: int = 0,
        deadline: Deadline | None = None,
    ) -> None:
        """``max_new_tokens``: decoding steps per window, at most the model's configured bound
        (0: that bound). ``min_new_tokens``: no end of text before that many tokens (0: none;
        benchmarks use it to decode a fixed number of tokens). ``deadline``: per second of audio
        in flight (default: the settings' ``triton_asr_seconds_per_audio_second``)."""
        if max_new_tokens < 0 or min_new_tokens < 0:
            raise ValueError("max_new_tokens and min_new_tokens must be >= 0")
        self.client = client
        self.model = model
        self.deadlines = WorkDeadlines(
            deadline or Deadline.from_settings(get_settings().triton_asr_seconds_per_audio_second)
        )
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.overlap = int(overlap_s * SAMPLE_RATE)
        self.pack_gap_s = pack_gap_s

    async def transcribe_window(
        self, audio16k: NDArray[np.float32], language: str | None, task: str = "transcribe"
    ) -> WindowResult:
        """One request: at most 30 s of 16 kHz audio; ``language`` is a Whisper code or None."""
        if audio16k.size > WINDOW_SAMPLES:
            raise InvalidInput(f"a window holds at most {WINDOW_S:.0f}s of audio")
        inputs = {
            "audio": np.ascontiguousarray(audio16k, dtype=np.float32).reshape(1, -1),
            "language": np.array([[(language or "").encode()]], dtype=np.object_),
            "task": np.array([[task.encode()]], dtype=np.object_),
            "max_new_tokens": np.array([[self.max_new_tokens]], dtype=np.int32),
        }
        if self.min_new_tokens:
            inputs["min_new_tokens"] = np.array([[self.min_new_tokens]], dtype=np.int32)
        with self.deadlines.admit(audio16k.size / SAMPLE_RATE) as deadline:
            out = await self.client.infer(self.model, inputs, OUTPUTS, deadline=deadline)
        no_speech = float(out["no_speech_prob"].reshape(-1)[0])
        segments = [
            TranscriptSegment(
                float(s["start"]),
                float(s["end"]),
                str(s["text"]),
                float(s["avg_logprob"]),
                no_speech,
                tuple(int(t) for t in s.get("tokens", ())),
            )
            for s in json.loads(_string(out["segments"]))
        ]
        tokens = tuple(int(t) for t in out["tokens"].reshape(-1) if t >= 0)
        return WindowResult(
            text=_string(out["text"]),
            tokens=tokens,
            segments=segments,
            language=_string(out["detected_language"]),
            language_probability=float(out["language_probability"].reshape(-1)[0]),
            avg_logprob=float(out["avg_logprob"].reshape(-1)[0]),
            no_speech_prob=no_speech,
        )

    async def detect_language(
        self, audio: NDArray[Any], sample_rate: int = SAMPLE_RATE
    ) -> tuple[str, float]:
        """(ISO 639-3 code, probability) from the first 30 s."""
        audio16k = as_audio16k(audio, sample_rate)
        result = await self.transcribe_window(audio16k[:WINDOW_SAMPLES], None, "detect")
        return canonical_code(result.language), result.language_probability

    async def transcribe(
        self,
        audio: NDArray[Any],
        sample_rate: int = SAMPLE_RATE,
        language: str | None = None,
        *,
        task: str = "transcribe",
    ) -> Transcription:
        """Transcribe (or translate to English) audio of any length.

        ``language``: ISO 639-3 code, or None to detect it (from the first 30 s when the audio
        is longer; windows are then all decoded in that language).
        """
        _check_task(task)
        code = whisper_code(language)
        audio16k = as_audio16k(audio, sample_rate)
        duration = audio16k.size / SAMPLE_RATE
        if audio16k.size <= WINDOW_SAMPLES:
            result = await self.transcribe_window(audio16k, code, task)
            return Transcription(
                canonical_code(result.language),
                result.language_probability,
                duration,
                result.segments,
                result.tokens,
            )

        probability = 1.0
        if code is None:
            first = await self.transcribe_window(audio16k[:WINDOW_SAMPLES], None, "detect")
            code, probability = first.language, first.language_probability
        spans = plan_windows(audio16k.size, WINDOW_SAMPLES, self.overlap)
        results = await asyncio.gather(
            *(self.transcribe_window(audio16k[s:e], code, task) for s, e in spans)
        )
        if language is not None:
            probability = float(np.mean([r.language_probability for r in results]))
        spans_s = [(s / SAMPLE_RATE, e / SAMPLE_RATE) for s, e in spans]
        segments = merge_windows(
            spans_s,
            [_shift(r.segments, s) for r, (s, _) in zip(results, spans_s, strict=True)],
        )
        tokens = tuple(t for r in results for t in r.tokens)
        return Transcription(canonical_code(code), probability, duration, segments, tokens)

    async def transcribe_packed(
        self,
        regions: Sequence[AudioRegion],
        language: str | None = None,
        *,
        task: str = "transcribe",
    ) -> list[Transcription]:
        """Transcribe speech regions packed into shared 30 s windows; one result per region,
        with times on the recording's clock (``region.start`` + time inside the region).

        Regions longer than a window go through ``transcribe`` on their own. With no
        ``language``, it is detected once, on the first packed window, for all regions.
        A region that a decoded segment spans together with another region, or that came
        back empty although audible, is decoded again in a window of its own, and so are the
        neighbours of an empty one that has words alone (``asr_packing`` says why): each
        region's text comes from exactly one decode.
        """
        _check_task(task)
        code = whisper_code(language)
        if not regions:
            return []
        short = [i for i, r in enumerate(regions) if r.audio.size <= WINDOW_SAMPLES]
        long = [i for i, r in enumerate(regions) if r.audio.size > WINDOW_SAMPLES]
        placements = pack_regions([regions[i].duration for i in short], WINDOW_S, self.pack_gap_s)
        # Off the event loop: a noise floor (percentiles, RNG) for every window is CPU work.
        windows = await asyncio.to_thread(
            lambda: [self._packed_audio(regions, short, window) for window in placements]
        )

        probability = 1.0
        if code is None:
            probe = windows[0] if windows else as_audio16k(regions[long[0]].audio)
            first = await self.transcribe_window(probe[:WINDOW_SAMPLES], None, "detect")
            code, probability = first.language, first.language_probability
        canonical = canonical_code(code)

        window_results, long_results = await asyncio.gather(
            asyncio.gather(*(self.transcribe_window(w, code, task) for w in windows)),
            asyncio.gather(
                *(
                    self.transcribe(regions[i].audio, SAMPLE_RATE, canonical, task=task)
                    for i in long
                )
            ),
        )
        out: list[Transcription | None] = [None] * len(regions)
        alone: set[int] = set()  # regions (indices into ``regions``) to decode alone
        empty: dict[int, list[int]] = {}  # audible but empty region -> its packed neighbours
        for window, result in zip(placements, window_results, strict=True):
            prob = result.language_probability if language is not None else probability
            unpacked = unpack_window(result.segments, window)
            for local, segments in unpacked.segments.items():
                i = short[local]
                tokens = tuple(t for s in segments for t in s.tokens)
                out[i] = _region_transcription(regions[i], canonical, prob, segments, tokens)
                if local in unpacked.redo:
                    alone.add(i)
                elif not segments and _audible(regions[i].audio):
                    alone.add(i)
                    empty[i] = [short[n] for n in neighbours(window, local)]
        if alone:
            solo = await self._decode_alone(regions, alone, code, task)
            # An empty region with words of its own: they were most likely read into the
            # text of a neighbour, with timestamps short of this region.
            suspects = {
                n
                for i, near in empty.items()
                if solo[i].segments
                for n in near
                if n not in alone and (held := out[n]) is not None and held.segments
            }
            solo |= await self._decode_alone(regions, suspects, code, task)
            for i, result in solo.items():
                prob = result.language_probability if language is not None else probability
                out[i] = _region_transcription(
                    regions[i], canonical, prob, result.segments, result.tokens
                )
        for i, whole in zip(long, long_results, strict=True):
            out[i] = Transcription(
                whole.language,
                whole.language_probability if language is not None else probability,
                whole.duration,
                _shift(whole.segments, regions[i].start),
                whole.tokens,
            )
        return [t for t in out if t is not None]

    async def _decode_alone(
        self, regions: Sequence[AudioRegion], which: set[int], code: str, task: str
    ) -> dict[int, WindowResult]:
        """Each of ``which`` in a window of its own (requests sent together: one batch)."""
        order = sorted(which)
        results = await asyncio.gather(
            *(self.transcribe_window(as_audio16k(regions[i].audio), code, task) for i in order)
        )
        return dict(zip(order, results, strict=True))

    def _packed_audio(
        self, regions: Sequence[AudioRegion], short: Sequence[int], window: Sequence[PackedRegion]
    ) -> NDArray[np.float32]:
        last = window[-1]
        size = round((last.offset + last.duration) * SAMPLE_RATE)
        clips = [as_audio16k(regions[short[p.region]].audio) for p in window]
        # The gaps carry the regions' own noise floor, not digital silence: Whisper reads a
        # region that starts out of exact zeros worse (bench/asr_real.py's recording, whisper-
        # base: WER 0.066 with zero gaps, 0.052 with the recording's floor in them).
        audio = _noise_floor(clips, size)
        for placement, clip in zip(window, clips, strict=True):
            start = round(placement.offset * SAMPLE_RATE)
            audio[start : start + clip.size] = clip[: max(0, size - start)]
        return audio


def _region_transcription(
    region: AudioRegion,
    language: str,
    probability: float,
    segments: Sequence[TranscriptSegment],
    tokens: tuple[int, ...],
) -> Transcription:
    """Segments on the region's clock -> its transcription on the recording's clock."""
    return Transcription(
        language, probability, region.duration, _shift(segments, region.start), tokens
    )


FLOOR_FRAME = SAMPLE_RATE // 50  # 20 ms


def _noise_floor(clips: Sequence[NDArray[np.float32]], size: int) -> NDArray[np.float32]:
    """``size`` samples of white noise at the clips' floor: the RMS of their quietest 20 ms
    frames (10th percentile), at most 30 dB under their loud ones (90th: regions without a
    pause get a quiet fill), zero for digital silence. Seeded: a window is the same every
    time it is built."""
    frames = [c[: c.size // FLOOR_FRAME * FLOOR_FRAME].reshape(-1, FLOOR_FRAME) for c in clips]
    stacked = np.concatenate([np.zeros((0, FLOOR_FRAME), np.float32), *frames])
    rms = np.sqrt(np.mean(np.square(stacked, dtype=np.float64), axis=1))
    floor = min(np.percentile(rms, 10), 0.03 * np.percentile(rms, 90)) if rms.size else 0.0
    noise = np.random.default_rng(0).standard_normal(size) * floor
    return noise.astype(np.float32)


def _audible(audio: NDArray[Any]) -> bool:
    """Not empty or digital silence: worth a window of its own when packing found no words."""
    return bool(audio.size) and bool(np.max(np.abs(audio)) > 1e-4)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise InvalidInput(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _string(array: NDArray[Any]) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
