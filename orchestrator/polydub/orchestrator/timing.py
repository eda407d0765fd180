"""Fit each dubbed segment into its original time slot (pure logic; the heart of dubbing quality).

Per segment, in this order:

1. **Speaking rate.** From the TTS duration at rate 1.0 (``natural``) and the slot
   (``end - start``), the rate that would fill the slot exactly, bounded to
   ``[min_rate, max_rate]`` and rounded *up* to ``rate_step`` (so the rate never leaves a
   residual it could have absorbed). A rate within ``resynth_tolerance`` of 1.0 is left at 1.0:
   re-synthesizing is not worth a 2 % change that the stretch does invisibly. The rate reaches the
   model as VITS ``length_scale = 1 / rate``.
2. **Residual time-stretch.** If the speech synthesized at that rate is still longer than the
   slot, a pitch-preserving stretch of at most ``max_stretch`` (never a slow-down: shorter speech
   simply ends early).
3. **Borrow from the following silence**, up to the next segment's start minus ``min_gap``
   (or the end of the media for the last segment). Stretching comes before borrowing because
   ending inside the original slot keeps lip sync; borrowed time is audible only as a late end.
4. **Overflow.** Whatever still does not fit is truncated with a short fade-out, and recorded.

Drift never accumulates: every dubbed segment starts at its original start, and none may run into
the next one, so an error in one segment cannot push the others.

Use it twice: ``plan_timing(spans, natural, ...)`` gives the rates (``resynthesize`` says which
segments need the TTS again at their new rate); after re-synthesis,
``plan_timing(spans, natural, synthesized=measured, ...)`` gives the final stretch, borrow and
overflow from the measured durations (VITS durations are not exactly ``natural / rate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

_EPS = 1e-9


class Span(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...


@dataclass(frozen=True)
class TimingPolicy:
    min_rate: float = 0.9  # slower than this sounds dragged
    max_rate: float = 1.35  # faster than this loses intelligibility
    max_stretch: float = 1.3  # residual time-stretch bound
    min_gap: float = 0.1  # silence always kept before the next segment when borrowing
    resynth_tolerance: float = 0.03  # |rate - 1| below this keeps the rate-1.0 synthesis
    rate_step: float = 0.01  # rates are quantized: deterministic, cacheable model inputs
    fade_out: float = 0.05  # fade applied where an overflow is truncated

    def __post_init__(self) -> None:
        if not 0 < self.min_rate <= 1.0 <= self.max_rate:
            raise ValueError("need 0 < min_rate <= 1 <= max_rate")
        if self.max_stretch < 1.0 or self.min_gap < 0 or self.rate_step <= 0:
            raise ValueError("need max_stretch >= 1, min_gap >= 0, rate_step > 0")


@dataclass(frozen=True)
class SegmentTiming:
    index: int  # position in the caller's list
    start: float  # the dub is placed here, always
    end: float
    natural_duration: float  # TTS at rate 1.0
    rate: float  # TTS speaking rate (VITS length_scale = 1 / rate)
    resynthesize: bool  # rate != 1.0: synthesize again at this rate
    synthesized_duration: float  # at ``rate`` (measured, or natural / rate when not given)
    stretch: float  # residual tempo factor applied to the synthesized audio (>= 1)
    available_after: float  # silence after ``end`` that may be borrowed
    borrowed: float  # seconds used beyond ``end``
    overflow: float  # seconds cut off (with a fade-out) because nothing else fitted
    dubbed_duration: float  # what is placed on the timeline, from ``start``

    @property
    def original_duration(self) -> float:
        return self.end - self.start

    @property
    def dubbed_end(self) -> float:
        return self.start + self.dubbed_duration

    @property
    def length_scale(self) -> float:
        return 1.0 / self.rate

    @property
    def fits(self) -> bool:
        return self.overflow <= _EPS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(original_duration=self.original_duration, dubbed_end=self.dubbed_end)
        return data


@dataclass(frozen=True)
class TimingPlan:
    segments: tuple[SegmentTiming, ...]  # in the caller's order

    @property
    def rates(self) -> list[float]:
        return [s.rate for s in self.segments]

    @property
    def to_resynthesize(self) -> list[int]:
        return [s.index for s in self.segments if s.resynthesize]

    @property
    def max_stretch(self) -> float:
        return max((s.stretch for s in self.segments), default=1.0)

    @property
    def total_borrowed(self) -> float:
        return sum(s.borrowed for s in self.segments)

    @property
    def total_overflow(self) -> float:
        return sum(s.overflow for s in self.segments)


def choose_rate(natural: float, slot: float, policy: TimingPolicy = TimingPolicy()) -> float:
    """The TTS speaking rate for a segment whose rate-1.0 speech lasts ``natural`` seconds."""
    if natural <= 0 or slot <= 0:
        return 1.0
    ideal = natural / slot
    bounded = min(max(ideal, policy.min_rate), policy.max_rate)
    steps = math.ceil(round(bounded / policy.rate_step, 9))
    rate = min(round(steps * policy.rate_step, 6), policy.max_rate)
    if abs(rate - 1.0) < policy.resynth_tolerance:
        return 1.0
    return rate


def fit_segment(
    slot: float, synthesized: float, available_after: float, policy: TimingPolicy = TimingPolicy()
) -> tuple[float, float, float, float]:
    """(stretch, borrowed, overflow, dubbed_duration) for speech of ``synthesized`` seconds."""
    if synthesized <= slot + _EPS:
        return 1.0, 0.0, 0.0, synthesized
    needed = synthesized / slot
    if needed <= policy.max_stretch:
        return needed, 0.0, 0.0, slot
    stretched = synthesized / policy.max_stretch
    excess = stretched - slot
    borrowed = min(excess, available_after)
    overflow = excess - borrowed
    if overflow <= _EPS:
        overflow = 0.0
    return policy.max_stretch, borrowed, overflow, slot + borrowed


def plan_timing(
    spans: Sequence[Span],
    natural: Sequence[float],
    *,
    timeline_end: float,
    synthesized: Sequence[float] | None = None,
    policy: TimingPolicy = TimingPolicy(),
) -> TimingPlan:
    """Rates, stretches, borrowing and overflow for every segment (see the module docstring).

    ``spans`` need not be sorted; results come back in the same order. ``timeline_end`` is the
    end of the media (the last segment may borrow up to it).
    """
    if len(natural) != len(spans) or (synthesized is not None and len(synthesized) != len(spans)):
        raise ValueError("spans, natural and synthesized must have the same length")
    for i, span in enumerate(spans):
        if not span.end > span.start >= 0:
            raise ValueError(f"segment {i}: need 0 <= start < end, got {span.start}..{span.end}")
        if natural[i] < 0 or (synthesized is not None and synthesized[i] < 0):
            raise ValueError(f"segment {i}: negative duration")
    order = sorted(range(len(spans)), key=lambda i: (spans[i].start, spans[i].end, i))
    following: dict[int, float] = {}
    for position, i in enumerate(order):
        if position + 1 < len(order):
            following[i] = spans[order[position + 1]].start - policy.min_gap
        else:
            following[i] = max(float(timeline_end), spans[i].end)
    result = []
    for i, span in enumerate(spans):
        start, end = float(span.start), float(span.end)
        slot = end - start
        rate = choose_rate(natural[i], slot, policy)
        duration = synthesized[i] if synthesized is not None else natural[i] / rate
        available = max(0.0, following[i] - end)
        stretch, borrowed, overflow, dubbed = fit_segment(slot, duration, available, policy)
        result.append(
            SegmentTiming(
                index=i,
                start=start,
                end=end,
                natural_duration=natural[i],
                rate=rate,
                resynthesize=rate != 1.0,
                synthesized_duration=duration,
                stretch=stretch,
                available_after=available,
                borrowed=borrowed,
                overflow=overflow,
                dubbed_duration=dubbed,
            )
        )
    return TimingPlan(tuple(result))
