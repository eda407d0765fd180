"""The quality gates of the ``separate`` stage: a fallback to ducking and a slow separation warn."""

from __future__ import annotations

import pytest

from polydub.orchestrator.gates import GateThresholds, stage_warnings
from polydub.orchestrator.quality import SeparationStats

pytestmark = pytest.mark.unit


def _codes(stats: SeparationStats) -> list[str]:
    return [w.code for w in stage_warnings("separate", stats.to_dict(), GateThresholds())]


def test_a_separated_background_in_real_time_raises_nothing() -> None:
    stats = SeparationStats("separate", "separate", seconds=60.0, realtime_factor=0.2)
    assert _codes(stats) == []
    assert _codes(SeparationStats("keep", "keep")) == []


def test_a_fallback_to_ducking_warns() -> None:
    stats = SeparationStats("separate", "keep", fallback="no separation model is served")
    assert _codes(stats) == ["separation_fallback"]


def test_a_separation_slower_than_real_time_warns() -> None:
    stats = SeparationStats("separate", "separate", seconds=10.0, realtime_factor=1.7)
    assert _codes(stats) == ["separation_slow"]
