"""make_segments: speaker turns and VAD speech regions to the segments that get dubbed."""

from __future__ import annotations

import pytest

from polydub.orchestrator.records import Segment, Span, Turn
from polydub.orchestrator.segments import SegmentPolicy, make_segments

pytestmark = pytest.mark.unit

WHOLE = (0.0, 1000.0)


def spans(*pairs: tuple[float, float]) -> list[Span]:
    return [Span(a, b) for a, b in pairs]


def test_speech_inside_each_turn_becomes_that_speakers_segment() -> None:
    turns = [Turn(0.0, 4.0, "A"), Turn(4.0, 9.0, "B")]
    speech = spans((0.5, 2.0), (3.5, 5.0), (7.0, 8.5))
    assert make_segments(turns, speech, window=WHOLE) == [
        Segment(0, 0.5, 2.0, "A"),
        Segment(1, 3.5, 4.0, "A"),  # a region across a speaker change is shared at the change
        Segment(2, 4.0, 5.0, "B"),
        Segment(3, 7.0, 8.5, "B"),
    ]


def test_short_pauses_of_one_speaker_are_bridged_a_change_of_speaker_never() -> None:
    turns = [Turn(0.0, 3.0, "A"), Turn(3.2, 6.0, "B")]
    speech = spans((0.0, 1.0), (1.3, 3.0), (3.2, 6.0))  # 0.3 s pause inside A, 0.2 s to B
    assert make_segments(turns, speech, window=WHOLE) == [
        Segment(0, 0.0, 3.0, "A"),
        Segment(1, 3.2, 6.0, "B"),
    ]
    # A pause of at least bridge_gap splits the speaker's speech.
    long_pause = spans((0.0, 1.0), (1.5, 3.0))
    assert len(make_segments([Turn(0.0, 3.0, "A")], long_pause, window=WHOLE)) == 2


def test_a_long_monologue_is_cut_at_its_longest_pause() -> None:
    speech = spans((0.0, 6.0), (6.2, 12.0), (12.45, 20.0))  # pauses of 0.2 s and 0.45 s
    policy = SegmentPolicy(max_seconds=15.0)
    assert make_segments([Turn(0.0, 20.0, "A")], speech, window=WHOLE, policy=policy) == [
        Segment(0, 0.0, 12.0, "A"),
        Segment(1, 12.45, 20.0, "A"),
    ]


def test_without_pauses_a_long_monologue_is_cut_evenly() -> None:
    segments = make_segments([Turn(0.0, 40.0, "A")], spans((0.0, 40.0)), window=WHOLE)
    assert [(s.start, s.end) for s in segments] == [(0.0, 13.333), (13.333, 26.667), (26.667, 40.0)]
    assert all(s.duration <= SegmentPolicy().max_seconds for s in segments)


def test_only_speech_inside_the_window_counts_and_crumbs_are_dropped() -> None:
    turns = [Turn(0.0, 10.0, "A")]
    speech = spans((1.0, 3.0), (4.0, 4.2), (6.0, 9.0))
    assert make_segments(turns, speech, window=(2.0, 7.0)) == [
        Segment(0, 2.0, 3.0, "A"),  # (4.0, 4.2) is shorter than min_seconds
        Segment(1, 6.0, 7.0, "A"),
    ]
    assert make_segments(turns, speech, window=(9.5, 10.0)) == []


def test_segments_come_in_time_order_numbered_from_zero_whatever_the_input_order() -> None:
    turns = [Turn(5.0, 8.0, "B"), Turn(0.0, 4.0, "A")]
    speech = spans((6.0, 7.123456), (0.5, 2.0))
    segments = make_segments(turns, speech, window=WHOLE)
    assert segments == [Segment(0, 0.5, 2.0, "A"), Segment(1, 6.0, 7.123, "B")]
    assert make_segments([], speech, window=WHOLE) == make_segments(turns, [], window=WHOLE) == []
