from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from polydub.orchestrator.timing import (
    SegmentTiming,
    TimingPolicy,
    choose_rate,
    fit_segment,
    plan_timing,
)

pytestmark = pytest.mark.unit


def exact(value: float) -> Any:
    """Equal up to float rounding (1e-12 s)."""
    return pytest.approx(value, abs=1e-12, rel=0)


@dataclass(frozen=True)
class Span:
    start: float
    end: float


def one(
    natural: float, *, slot: float = 2.0, timeline_end: float = 10.0, **policy: float
) -> SegmentTiming:
    plan = plan_timing([Span(0.0, slot)], [natural], timeline_end=timeline_end,
                       policy=TimingPolicy(**policy))  # fmt: skip
    return plan.segments[0]


def test_speech_that_fits_exactly_is_left_alone() -> None:
    s = one(2.0)
    assert (s.rate, s.resynthesize, s.stretch, s.borrowed, s.overflow) == (1.0, False, 1.0, 0, 0)
    assert s.dubbed_duration == 2.0 and s.dubbed_end == 2.0 and s.fits


def test_rate_absorbs_a_long_translation() -> None:
    s = one(2.4)
    assert s.rate == 1.2 and s.resynthesize and s.length_scale == exact(1 / 1.2)
    assert s.synthesized_duration == exact(2.0)
    assert s.stretch == 1.0 and s.dubbed_duration == exact(2.0)


def test_small_change_is_stretched_not_resynthesized() -> None:
    s = one(2.04)  # 2 % too long: inside resynth_tolerance
    assert s.rate == 1.0 and not s.resynthesize
    assert s.stretch == exact(1.02) and s.dubbed_duration == 2.0


def test_short_speech_is_slowed_to_min_rate_only() -> None:
    s = one(1.0)  # would need rate 0.5
    assert s.rate == 0.9 and s.resynthesize
    assert s.synthesized_duration == exact(1.0 / 0.9)
    assert s.stretch == 1.0  # never stretched slower: it just ends early
    assert s.dubbed_duration == exact(1.0 / 0.9) and s.borrowed == 0


def test_slightly_short_speech_fills_the_slot() -> None:
    s = one(1.9)
    assert s.rate == 0.95 and s.synthesized_duration == exact(2.0)


def test_rate_capped_then_residual_stretch() -> None:
    s = one(3.0)  # needs 1.5x: 1.35 from the rate, 1.111.. from the stretch
    assert s.rate == 1.35
    assert s.synthesized_duration == exact(3.0 / 1.35)
    assert s.stretch == exact(3.0 / 1.35 / 2.0)
    assert s.dubbed_duration == 2.0 and s.borrowed == 0 and s.fits


def test_then_borrows_from_the_following_silence() -> None:
    plan = plan_timing([Span(0.0, 2.0), Span(3.0, 4.0)], [4.0, 1.0], timeline_end=10.0)
    s = plan.segments[0]
    assert (s.rate, s.stretch) == (1.35, 1.3)
    assert s.available_after == exact(0.9)  # next start 3.0 minus the 0.1 gap
    assert s.borrowed == exact(4.0 / 1.35 / 1.3 - 2.0)
    assert s.overflow == 0 and s.dubbed_end == exact(4.0 / 1.35 / 1.3)


def test_then_truncates_the_overflow() -> None:
    plan = plan_timing([Span(0.0, 2.0), Span(2.5, 4.0)], [5.0, 1.5], timeline_end=10.0)
    s = plan.segments[0]
    assert s.borrowed == exact(0.4)
    assert s.overflow == exact(5.0 / 1.35 / 1.3 - 2.4)
    assert s.dubbed_duration == exact(2.4) and not s.fits
    assert s.dubbed_end <= 2.5 - 0.1 + 1e-12  # never runs into the next segment
    assert plan.total_overflow == exact(s.overflow)


def test_last_segment_borrows_up_to_the_end_of_the_media_without_gap() -> None:
    s = one(5.0, slot=2.0, timeline_end=2.5)
    assert s.available_after == 0.5 and s.borrowed == 0.5 and s.dubbed_duration == 2.5


def test_measured_durations_replace_the_estimate() -> None:
    spans = [Span(1.0, 3.0)]
    first = plan_timing(spans, [2.4], timeline_end=5.0)
    assert first.to_resynthesize == [0]
    # VITS came out a little longer than natural / rate at rate 1.2.
    final = plan_timing(spans, [2.4], synthesized=[2.1], timeline_end=5.0)
    s = final.segments[0]
    assert s.rate == 1.2 and s.synthesized_duration == 2.1
    assert s.stretch == exact(1.05) and s.dubbed_duration == 2.0
    assert s.start == 1.0 and s.dubbed_end == 3.0


def test_unsorted_input_keeps_its_order_and_finds_the_next_segment_by_time() -> None:
    spans = [Span(5.0, 6.0), Span(0.0, 2.0)]
    plan = plan_timing(spans, [1.0, 2.0], timeline_end=8.0)
    assert [s.index for s in plan.segments] == [0, 1]
    assert [s.start for s in plan.segments] == [5.0, 0.0]
    assert plan.segments[1].available_after == exact(2.9)
    assert plan.segments[0].available_after == 2.0


def test_overlapping_originals_borrow_nothing() -> None:
    plan = plan_timing([Span(0.0, 2.0), Span(1.5, 3.0)], [5.0, 1.5], timeline_end=10.0)
    s = plan.segments[0]
    assert s.available_after == 0.0 and s.borrowed == 0.0 and s.dubbed_duration == 2.0


def test_empty_speech() -> None:
    s = one(0.0)
    assert (s.rate, s.stretch, s.dubbed_duration, s.overflow) == (1.0, 1.0, 0.0, 0.0)


def test_rates_are_rounded_up_to_the_step() -> None:
    assert choose_rate(1.201, 1.0) == 1.21
    assert choose_rate(1.2, 1.0) == 1.2  # 1.2 / 0.01 is 119.99999999999999 in floats
    assert choose_rate(2.4, 2.0) == 1.2
    assert choose_rate(9.0, 1.0) == 1.35
    assert choose_rate(1.0, 0.0) == 1.0


def test_fit_segment_directly() -> None:
    assert fit_segment(2.0, 1.5, 1.0) == (1.0, 0.0, 0.0, 1.5)
    assert fit_segment(2.0, 2.6, 0.0) == (1.3, 0.0, 0.0, 2.0)
    stretch, borrowed, overflow, dubbed = fit_segment(2.0, 3.9, 0.5)
    assert stretch == 1.3 and borrowed == 0.5 and dubbed == 2.5
    assert overflow == exact(3.9 / 1.3 - 2.5)


def test_custom_policy_bounds() -> None:
    s = one(3.0, max_rate=1.0, max_stretch=1.0, min_gap=0.0, timeline_end=2.5)
    assert (s.rate, s.stretch, s.borrowed) == (1.0, 1.0, 0.5)
    assert s.overflow == exact(0.5)


@pytest.mark.parametrize(
    ("spans", "natural", "synthesized"),
    [
        ([Span(1.0, 1.0)], [1.0], None),
        ([Span(2.0, 1.0)], [1.0], None),
        ([Span(-1.0, 1.0)], [1.0], None),
        ([Span(0.0, 1.0)], [1.0, 2.0], None),
        ([Span(0.0, 1.0)], [-1.0], None),
        ([Span(0.0, 1.0)], [1.0], [1.0, 1.0]),
    ],
)
def test_invalid_input(
    spans: list[Span], natural: list[float], synthesized: list[float] | None
) -> None:
    with pytest.raises(ValueError):
        plan_timing(spans, natural, synthesized=synthesized, timeline_end=10.0)


@pytest.mark.parametrize("kwargs", [{"min_rate": 1.1}, {"max_rate": 0.9}, {"max_stretch": 0.9},
                                    {"min_gap": -0.1}, {"rate_step": 0.0}])  # fmt: skip
def test_invalid_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimingPolicy(**kwargs)


def test_no_drift_over_a_long_random_timeline() -> None:
    rng = np.random.default_rng(4)
    starts = np.cumsum(rng.uniform(0.05, 2.0, 300))
    lengths = rng.uniform(0.3, 6.0, 300)
    spans = [Span(float(s), float(s + d)) for s, d in zip(starts, lengths, strict=True)]
    natural = [float(d * f) for d, f in zip(lengths, rng.uniform(0.3, 3.0, 300), strict=True)]
    end = spans[-1].end + 1.0
    plan = plan_timing(spans, natural, timeline_end=end)
    ordered = sorted(plan.segments, key=lambda s: s.start)
    for s, nxt in zip(ordered, [*ordered[1:], None], strict=True):
        original = spans[s.index]
        assert s.start == original.start  # every dub starts where the original did
        assert 0.9 <= s.rate <= 1.35 and 1.0 <= s.stretch <= 1.3
        limit = max(original.end, nxt.start - 0.1) if nxt else end
        assert s.dubbed_end <= limit + 1e-9
        assert s.borrowed <= s.available_after + 1e-12
        assert s.dubbed_duration == pytest.approx(
            s.synthesized_duration / s.stretch - s.overflow, abs=1e-9
        )
    assert plan.max_stretch <= 1.3 and plan.total_borrowed > 0 and plan.total_overflow > 0
