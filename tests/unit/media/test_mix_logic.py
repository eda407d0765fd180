"""The numpy parts of mixing and stretching (no ffmpeg)."""

from typing import Any

import numpy as np
import pytest

from polydub.media.mix import (
    Loudness,
    MixPolicy,
    Placement,
    assemble,
    duck_envelope,
    merge_intervals,
    normalisation_gain,
    shifted_loudness,
    speech_intervals,
)
from polydub.media.stretch import bounded_tempo, fade_out, fit_length, tempo_to_fit
from polydub.orchestrator.timing import SegmentTiming

pytestmark = pytest.mark.unit


def test_assemble_places_samples_exactly_and_sums_overlaps() -> None:
    ones = np.ones(4, np.float32)
    track = assemble(
        [Placement(0.25, ones), Placement(0.5, 2 * ones), Placement(0.875, ones)],
        total_frames=8,
        sample_rate=8,
    )
    # starts at frames 2, 4 and 7; the last is cut at the end of the timeline
    assert track.tolist() == [0, 0, 1, 1, 3, 3, 2, 3]


def test_merge_intervals_bridges_short_gaps() -> None:
    merged = merge_intervals([(5.0, 6.0), (0.0, 1.0), (1.3, 2.0), (2.0, 1.0)], bridge_gap=0.5)
    assert merged == [(0.0, 2.0), (5.0, 6.0)]


def test_duck_envelope_ramps_in_db() -> None:
    policy = MixPolicy(attack=0.5, release=1.0)
    gain = duck_envelope(0, 40, 10, [(1.0, 2.0)], -20.0, policy)
    db = np.round(20 * np.log10(gain), 4)
    assert db[:5].tolist() == [0.0] * 5  # before the attack starts at 0.5 s
    assert db[5:10].tolist() == [0.0, -4.0, -8.0, -12.0, -16.0]  # linear in dB over 0.5 s
    assert db[10:21].tolist() == [-20.0] * 11  # under speech, 1.0 .. 2.0 s inclusive
    assert db[21:31].tolist() == [-18.0, -16.0, -14.0, -12.0, -10.0, -8.0, -6.0, -4.0, -2.0, 0.0]
    assert db[31:].tolist() == [0.0] * 9
    # a chunk far from speech is all ones; a chunk offset gives the same values
    assert duck_envelope(100, 10, 10, [(1.0, 2.0)], -20.0, policy).tolist() == [1.0] * 10
    assert np.array_equal(duck_envelope(10, 10, 10, [(1.0, 2.0)], -20.0, policy), gain[10:20])


def test_speech_intervals_cover_original_and_dub() -> None:
    base: dict[str, Any] = dict(natural_duration=1.0, rate=1.0, resynthesize=False, synthesized_duration=1.0,
                stretch=1.0, available_after=1.0, overflow=0.0)  # fmt: skip
    a = SegmentTiming(index=0, start=1.0, end=2.0, borrowed=0.5, dubbed_duration=1.5, **base)
    b = SegmentTiming(index=1, start=3.0, end=5.0, borrowed=0.0, dubbed_duration=1.0, **base)
    assert speech_intervals([a, b]) == [(1.0, 2.5), (3.0, 5.0)]


def test_normalisation_gain() -> None:
    assert normalisation_gain(Loudness(-30.0, -10.0, 3.0), -23.0, -1.0) == 7.0
    assert normalisation_gain(Loudness(-30.0, -4.0, 3.0), -23.0, -1.0) == 3.0  # peak-limited
    assert normalisation_gain(Loudness(-16.0, -0.5, 3.0), -23.0, -1.0) == -7.0
    assert normalisation_gain(Loudness(-70.0, float("-inf"), 0.0), -23.0, -1.0) == 0.0


def test_fit_length_pads_or_truncates_with_a_fade() -> None:
    x = np.ones(10, np.float32)
    assert fit_length(x, 12, 10).tolist() == [1.0] * 10 + [0.0, 0.0]
    cut = fit_length(x, 6, 10, fade_seconds=0.3)
    assert cut.tolist() == [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    stereo = fade_out(np.ones((3, 2), np.float32), 2, 1.0)
    assert stereo.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]


def test_tempo_bounds() -> None:
    assert bounded_tempo(2.0) == 1.3 and bounded_tempo(0.5) == 1 / 1.3 and bounded_tempo(1.1) == 1.1
    assert tempo_to_fit(2.6, 2.0) == 1.3 and tempo_to_fit(2.2, 2.0) == pytest.approx(1.1)
    assert tempo_to_fit(1.0, 2.0) == 1.0 and tempo_to_fit(0.0, 2.0) == 1.0
    with pytest.raises(ValueError):
        bounded_tempo(0.0)
    with pytest.raises(ValueError):
        bounded_tempo(1.0, max_tempo=0.9)


def test_loudness_after_a_gain_moves_by_the_gain_away_from_the_absolute_gate() -> None:
    measured = Loudness(-30.0, -6.0, 4.0)
    levels = [-120.7, -45.0, -31.0, -28.0]  # silence far under the gate, speech far above
    assert shifted_loudness(measured, levels, 7.0) == Loudness(-23.0, 1.0, 4.0)
    assert shifted_loudness(measured, levels, -3.5) == Loudness(-33.5, -9.5, 4.0)


def test_loudness_after_a_gain_is_unknown_when_a_block_crosses_the_absolute_gate() -> None:
    measured = Loudness(-30.0, -6.0, 4.0)
    assert shifted_loudness(measured, [-74.0, -30.0], 7.0) is None  # -67 after: now gated in
    assert shifted_loudness(measured, [-68.0, -30.0], -3.0) is None  # -71 after: now gated out
    assert shifted_loudness(measured, [-70.05, -30.0], 0.5) is None  # at the gate, within rounding
    assert shifted_loudness(measured, [-74.0, -30.0], -3.0) is not None  # stays under it
    silence = Loudness(-70.0, float("-inf"), 0.0)  # ebur128's floor: nothing over the gate
    assert shifted_loudness(silence, [-120.7, -120.7], 6.0) is None
