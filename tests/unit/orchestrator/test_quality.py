import json
from dataclasses import dataclass

import pytest

from polydub.orchestrator.quality import asr_stats, fit_stats, loudness_stats, translation_stats
from polydub.orchestrator.timing import plan_timing

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Span:
    start: float
    end: float


def test_asr_stats_are_duration_weighted() -> None:
    stats = asr_stats([1.0, 3.0], [-0.2, -0.6], [0.1, 0.7])
    assert stats.to_dict() == {"segments": 2, "speech_seconds": 4.0, "avg_logprob": -0.5,
                               "no_speech_ratio": 0.75}  # fmt: skip
    assert asr_stats([], [], []).avg_logprob is None
    with pytest.raises(ValueError):
        asr_stats([1.0], [], [])


def test_translation_stats() -> None:
    stats = translation_stats(
        ["Hello", "How are you?", "Yes", ""], ["Hola", "¿Cómo estás?", "", ""]
    )
    assert stats.segments == 4
    assert stats.length_ratio == round(16 / 20, 4)
    assert stats.median_segment_ratio == 0.8 and stats.max_segment_ratio == 1.0
    assert stats.empty_translations == 1
    assert translation_stats([], []).length_ratio is None


def test_fit_stats_from_a_plan() -> None:
    plan = plan_timing(
        [Span(0.0, 2.0), Span(3.0, 4.0), Span(5.0, 6.0), Span(6.2, 7.0)],
        [2.0, 1.5, 3.0, 0.5],
        timeline_end=8.0,
    )
    stats = fit_stats(plan.segments)
    assert stats.segments == 4 and stats.resynthesized == 3
    assert (stats.stretched, stats.borrowed, stats.overflowed, stats.fitted) == (2, 1, 1, 3)
    assert stats.max_rate == 1.35 and stats.min_rate == 0.9 and stats.max_stretch == 1.3
    assert stats.original_seconds == 4.8
    assert stats.borrowed_seconds == round(sum(s.borrowed for s in plan.segments), 4)
    assert stats.overflow_seconds == round(plan.total_overflow, 4) > 0
    assert fit_stats([]).segments == 0


def test_loudness_stats() -> None:
    stats = loudness_stats(-23.4, -2.1, 5.0, target_lufs=-23.0, gain_db=-3.0, clipped_samples=3,
                           total_samples=3_000_000)  # fmt: skip
    assert stats.within_target and stats.clipped_ratio == 1e-6
    assert not loudness_stats(-25.0, -2.0, 1.0, target_lufs=-23.0, gain_db=0.0, clipped_samples=0,
                              total_samples=0).within_target  # fmt: skip


def test_loudness_of_digital_silence_is_json() -> None:
    silent = loudness_stats(float("-inf"), float("-inf"), 0.0, target_lufs=-23.0, gain_db=0.0,
                            clipped_samples=0, total_samples=96_000)  # fmt: skip
    assert (silent.integrated_lufs, silent.true_peak_dbtp, silent.lra) == (None, None, 0.0)
    assert not silent.within_target
    json.dumps(silent.to_dict(), allow_nan=False)  # jsonb refuses -Infinity
