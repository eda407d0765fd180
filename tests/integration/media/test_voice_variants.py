"""A chosen voice is heard as a pitch: real speech (espeak-ng) rendered the way synthesize renders
a language (``segment_shifts`` for the shifts, ``render_segments`` through ffmpeg's rubberband)
comes out at each variant's F0, estimated on the rendered samples, while the other speaker's
segment stays sample for sample what it was. (The e2e test of the same choice runs on the
tiny random-weight TTS, whose speech has no pitch to estimate; it checks the wiring.)"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from polydub.media.mix import render_segments
from polydub.orchestrator.records import ScoredText, Speaker, Translated, VoiceCast
from polydub.orchestrator.revise import Review
from polydub.orchestrator.voice_choice import segment_shifts, with_chosen_voices
from polydub.orchestrator.voices import Voice, cast_voices, estimate_f0, semitones_between
from polydub.review import ReviewSegment, ReviewState
from polydub.samples import FEMALE_VOICE, MALE_VOICE, espeak
from polydub.voice_catalog import VARIANTS, variant_shift

pytestmark = pytest.mark.integration

RATE = 16_000  # MMS-TTS's rate
OUT = 48_000
TEXTS = {
    "A": (MALE_VOICE, "hello and welcome, this is a short test of my voice"),
    "B": (FEMALE_VOICE, "and this is the other person answering in a few words"),
}


@dataclass(frozen=True)
class _Timing:
    start: float
    end: float
    stretch: float
    dubbed_duration: float
    dubbed_end: float


def _segment(i: int, speaker: str, seconds: float) -> Translated:
    start = 10.0 * i
    return Translated(
        i, start, start + seconds, speaker, "x", None, None, "x", 0, (ScoredText("x", 0.0),)
    )


def test_a_chosen_variant_renders_that_speaker_at_its_pitch_and_no_one_else() -> None:
    speech = [espeak(text, voice, sample_rate=RATE) for voice, text in TEXTS.values()]
    own_f0 = estimate_f0(speech[0], RATE)  # the "model's" voice: speaker A's own speech
    assert own_f0 is not None
    own = Voice("mms_tts_spa", "male", round(own_f0, 1))
    speakers = [Speaker("A", "male", 120.0, 0.9, 3.0), Speaker("B", "female", 210.0, 0.9, 3.0)]
    segments = [
        _segment(i, s, len(a) / RATE) for i, (s, a) in enumerate(zip(TEXTS, speech, strict=True))
    ]
    timings = [_Timing(s.start, s.end, 1.0, s.end - s.start, s.end) for s in segments]

    def render(choice: dict[str, str]) -> tuple[list[float], list[np.ndarray]]:  # type: ignore[type-arg]
        rows = tuple(
            ReviewSegment(s.id, s.start, s.end, s.speaker, s.text, s.translation) for s in segments
        )
        review = Review(ReviewState(rows, tuple(sorted(choice.items()))), "base", None, 2)
        cast = with_chosen_voices(cast_voices(speakers, [own]), review, own)
        shifts = segment_shifts(VoiceCast((own,), tuple(cast)), review, segments)
        return shifts, render_segments(speech, RATE, timings, shifts, out_rate=OUT)

    automatic, before = render({})
    heard = []
    for variant in VARIANTS:
        shifts, after = render({"A": f"mms_tts_spa:{variant.name}"})
        assert shifts[0] == variant_shift(variant, own.median_f0)
        assert shifts[1] == automatic[1]
        assert np.array_equal(after[1], before[1])  # speaker B: sample for sample
        assert after[0].shape == before[0].shape  # a pitch shift keeps the timing
        f0 = estimate_f0(after[0], OUT)
        assert f0 is not None, variant
        # The rendered speech's median F0 lands where the variant puts it (its own F0, or as
        # near as the engine's 12 semitones reach from this ~100 Hz voice), within a semitone.
        target = own.median_f0 * 2 ** (shifts[0] / 12)
        assert abs(semitones_between(target, f0)) < 1.0, (variant, f0, target)
        heard.append(f0)
    assert all(semitones_between(a, b) > 2.0 for a, b in itertools.pairwise(heard)), heard
