"""Figures for the per-job quality report: pure functions over what the stages already measured.

Each helper returns a small dataclass with ``to_dict()``; the pipeline puts them under its stage's
name in the report (``asr``, ``translation``, ``timing``, ``mix``, ``speakers``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .records import Transcribed, Translated
from .timing import SegmentTiming


@dataclass(frozen=True)
class AsrStats:
    segments: int
    speech_seconds: float
    avg_logprob: float | None  # duration-weighted mean over segments
    no_speech_ratio: float | None  # share of speech time whose no-speech probability > 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def asr_stats(
    durations: Sequence[float],
    avg_logprobs: Sequence[float],
    no_speech_probs: Sequence[float],
    *,
    no_speech_threshold: float = 0.5,
) -> AsrStats:
    if not len(durations) == len(avg_logprobs) == len(no_speech_probs):
        raise ValueError("durations, avg_logprobs and no_speech_probs must have the same length")
    total = sum(durations)
    if not durations or total <= 0:
        return AsrStats(len(durations), 0.0, None, None)
    weighted = sum(d * lp for d, lp in zip(durations, avg_logprobs, strict=True)) / total
    silent = sum(d for d, p in zip(durations, no_speech_probs, strict=True)
                 if p > no_speech_threshold)  # fmt: skip
    return AsrStats(len(durations), round(total, 3), round(weighted, 4), round(silent / total, 4))


def transcript_stats(segments: Sequence[Transcribed]) -> AsrStats:
    """``asr_stats`` of transcribed segments; one that was never decoded counts as unsure
    silence (log-probability 0, no-speech probability 1)."""
    return asr_stats(
        [s.duration for s in segments],
        [0.0 if s.avg_logprob is None else s.avg_logprob for s in segments],
        [1.0 if s.no_speech_prob is None else s.no_speech_prob for s in segments],
    )


@dataclass(frozen=True)
class TranslationStats:
    segments: int
    length_ratio: float | None  # target characters / source characters, all segments
    median_segment_ratio: float | None
    max_segment_ratio: float | None
    empty_translations: int  # a non-empty source with an empty target
    spoken_segments: int = 0  # a non-empty source: what there is to translate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def translation_stats(sources: Sequence[str], targets: Sequence[str]) -> TranslationStats:
    """Length ratios in characters (stripped): a translation much longer than its source is what
    forces fast speech and stretching later; an empty one is a failure worth seeing."""
    if len(sources) != len(targets):
        raise ValueError("sources and targets must have the same length")
    pairs = [(len(s.strip()), len(t.strip())) for s, t in zip(sources, targets, strict=True)]
    ratios = [t / s for s, t in pairs if s > 0]
    source_chars = sum(s for s, _ in pairs)
    return TranslationStats(
        segments=len(pairs),
        length_ratio=round(sum(t for _, t in pairs) / source_chars, 4) if source_chars else None,
        median_segment_ratio=round(statistics.median(ratios), 4) if ratios else None,
        max_segment_ratio=round(max(ratios), 4) if ratios else None,
        empty_translations=sum(1 for s, t in pairs if s > 0 and t == 0),
        spoken_segments=sum(1 for s, _ in pairs if s > 0),
    )


def translated_stats(segments: Sequence[Translated]) -> TranslationStats:
    """``translation_stats`` of translated segments: what was said against what the dub says."""
    return translation_stats([s.text for s in segments], [s.translation for s in segments])


@dataclass(frozen=True)
class FitStats:
    segments: int
    fitted: int  # nothing truncated
    resynthesized: int  # speaking rate changed from 1.0
    stretched: int  # residual stretch > 1
    borrowed: int  # ran into the following silence
    overflowed: int  # truncated with a fade-out
    mean_rate: float
    min_rate: float
    max_rate: float
    mean_stretch: float
    max_stretch: float
    borrowed_seconds: float
    overflow_seconds: float
    max_overflow: float
    original_seconds: float  # total slot time
    dubbed_seconds: float  # total dubbed speech placed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_stats(timings: Iterable[SegmentTiming]) -> FitStats:
    items = list(timings)
    if not items:
        return FitStats(0, 0, 0, 0, 0, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    rates = [t.rate for t in items]
    stretches = [t.stretch for t in items]

    def r(value: float) -> float:
        return round(value, 4)

    return FitStats(
        segments=len(items),
        fitted=sum(t.fits for t in items),
        resynthesized=sum(t.resynthesize for t in items),
        stretched=sum(t.stretch > 1.0 for t in items),
        borrowed=sum(t.borrowed > 0 for t in items),
        overflowed=sum(not t.fits for t in items),
        mean_rate=r(statistics.fmean(rates)),
        min_rate=r(min(rates)),
        max_rate=r(max(rates)),
        mean_stretch=r(statistics.fmean(stretches)),
        max_stretch=r(max(stretches)),
        borrowed_seconds=r(sum(t.borrowed for t in items)),
        overflow_seconds=r(sum(t.overflow for t in items)),
        max_overflow=r(max(t.overflow for t in items)),
        original_seconds=r(sum(t.original_duration for t in items)),
        dubbed_seconds=r(sum(t.dubbed_duration for t in items)),
    )


@dataclass(frozen=True)
class LoudnessStats:
    # None for digital silence: ffmpeg measures -inf, which JSON (and jsonb) cannot hold.
    integrated_lufs: float | None
    true_peak_dbtp: float | None
    lra: float | None
    target_lufs: float
    within_target: bool  # within +-1 LU of the target (EBU R128's tolerance for live is +-1)
    gain_db: float
    clipped_samples: int
    clipped_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loudness_stats(
    integrated_lufs: float,
    true_peak_dbtp: float,
    lra: float,
    *,
    target_lufs: float,
    gain_db: float,
    clipped_samples: int,
    total_samples: int,
) -> LoudnessStats:
    return LoudnessStats(
        integrated_lufs=_finite(integrated_lufs),
        true_peak_dbtp=_finite(true_peak_dbtp),
        lra=_finite(lra),
        target_lufs=target_lufs,
        within_target=abs(integrated_lufs - target_lufs) <= 1.0,
        gain_db=gain_db,
        clipped_samples=clipped_samples,
        clipped_ratio=round(clipped_samples / total_samples, 6) if total_samples else 0.0,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SeparationStats:
    """The ``separate`` stage: which background the mix got, and what separating it cost.

    ``background``: what the job asked for (``keep``, ``separate``, ``drop``) as resolved, and
    ``used``: what the mix gets (``separate`` falls back to ``keep``, ducking, when no model is
    served or the separation fails: ``fallback`` says why). ``speech_ratio_db``: the removed
    speech stem's energy over the original's; ``realtime_factor``: elapsed / audio seconds.
    """

    background: str
    used: str
    fallback: str | None = None
    seconds: float | None = None
    chunks: int | None = None
    speech_ratio_db: float | None = None
    elapsed_s: float | None = None
    realtime_factor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
