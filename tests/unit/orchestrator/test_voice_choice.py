"""The voice catalogue (each MMS-TTS voice and its pitch variants) and the pitch each segment is
rendered at when a reviewer picks a voice for a speaker or a segment."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from polydub.media.stretch import MAX_SEMITONES
from polydub.orchestrator.records import ScoredText, Translated, VoiceCast
from polydub.orchestrator.revise import Review
from polydub.orchestrator.voice_choice import segment_shifts, segment_voices, with_chosen_voices
from polydub.orchestrator.voices import Voice, VoiceAssignment, semitones_between
from polydub.review import ReviewSegment, ReviewState, from_stage_files
from polydub.voice_catalog import (
    VARIANTS,
    parse,
    variant_shift,
    voice_ids,
    voices_of,
)

OWN_F0 = 140.0
CAST = VoiceCast(
    (Voice("mms_tts_spa", "male", OWN_F0),),
    (
        VoiceAssignment("A", "mms_tts_spa", -2.0, 124.7, True, True),
        VoiceAssignment("B", "mms_tts_spa", 3.0, 166.5, True, True),
    ),
)


def _segment(id: int, speaker: str) -> Translated:
    return Translated(
        id, float(id), id + 0.8, speaker, "Hi.", None, None, "Hola.", 0, (ScoredText("Hola.", 0.0),)
    )


SEGMENTS = [_segment(0, "A"), _segment(1, "B"), _segment(2, "A")]


def _review(voices: dict[str, str], segment_voice: dict[int, str] | None = None) -> Review:
    rows = tuple(
        ReviewSegment(
            s.id, s.start, s.end, s.speaker, s.text, s.translation, (segment_voice or {}).get(s.id)
        )
        for s in SEGMENTS
    )
    return Review(ReviewState(rows, tuple(sorted(voices.items()))), "base.json", None, 2)


def test_each_model_offers_its_own_voice_and_distinct_gendered_variants() -> None:
    voices = voices_of("mms_tts_spa")
    assert voices[0].id == "mms_tts_spa" and voices[0].variant is None
    assert [v.id for v in voices[1:]] == [f"mms_tts_spa:{v.name}" for v in VARIANTS]
    for variant in VARIANTS:  # inside the gender stage's range for its label
        low, high = (85.0, 165.0) if variant.gender == "male" else (155.0, 275.0)
        assert low <= variant.f0 <= high
    f0s = sorted(v.f0 for v in VARIANTS)
    assert all(semitones_between(a, b) >= 2.8 for a, b in itertools.pairwise(f0s))
    assert {v.gender for v in VARIANTS} == {"male", "female"}
    assert voice_ids(["mms_tts_spa"]) == {v.id for v in voices}
    assert voice_ids(["mms_tts_spa:female_low"]) == {v.id for v in voices}


def test_ids_parse_back_and_an_unknown_variant_is_the_bare_model() -> None:
    assert parse("mms_tts_spa:male_low").variant == VARIANTS[0]
    assert parse("mms_tts_spa").variant is None
    unknown = parse("mms_tts_spa:whisper")
    assert (unknown.id, unknown.model, unknown.variant) == ("mms_tts_spa", "mms_tts_spa", None)


def test_a_variant_shift_goes_from_the_voice_to_the_variant_and_is_bounded() -> None:
    female = VARIANTS[-1]
    assert variant_shift(female, OWN_F0) == pytest.approx(
        semitones_between(OWN_F0, female.f0), abs=0.01
    )
    assert variant_shift(female, 40.0) == MAX_SEMITONES  # an odd probe: bounded


def test_without_a_review_or_a_choice_the_cast_decides() -> None:
    assert segment_shifts(CAST, None, SEGMENTS) == [-2.0, 3.0, -2.0]
    same = _review({"A": "mms_tts_spa", "B": "mms_tts_spa"})
    assert segment_shifts(CAST, same, SEGMENTS) == [-2.0, 3.0, -2.0]


def test_a_speakers_chosen_variant_moves_only_that_speaker() -> None:
    high = next(v for v in VARIANTS if v.name == "female_high")
    chosen = _review({"A": "mms_tts_spa:female_high", "B": "mms_tts_spa"})
    expected = variant_shift(high, OWN_F0)
    assert segment_shifts(CAST, chosen, SEGMENTS) == [expected, 3.0, expected]


def test_a_segments_own_voice_wins_over_its_speakers() -> None:
    low = next(v for v in VARIANTS if v.name == "male_low")
    chosen = _review({"A": "mms_tts_spa:female_high"}, {2: "mms_tts_spa:male_low"})
    shifts = segment_shifts(CAST, chosen, SEGMENTS)
    assert shifts[2] == variant_shift(low, OWN_F0) and shifts[1] == 3.0
    assert shifts[0] != shifts[2]


def test_a_voice_of_another_model_keeps_the_cast() -> None:
    odd = _review({"A": "mms_tts_fra:female_high"})
    assert segment_shifts(CAST, odd, SEGMENTS) == [-2.0, 3.0, -2.0]


def test_a_chosen_variant_is_written_into_the_cast_and_the_own_voice_reverts_it() -> None:
    own = CAST.voices[0]
    chosen = with_chosen_voices(CAST.assignments, _review({"A": "mms_tts_spa:female_high"}), own)
    high = next(v for v in VARIANTS if v.name == "female_high")
    assert chosen[0].voice == "mms_tts_spa:female_high"
    assert chosen[0].semitones == variant_shift(high, OWN_F0) and not chosen[0].shared
    assert chosen[0].f0 == pytest.approx(high.f0, abs=0.5)
    assert chosen[1] == replace(CAST.assignments[1], shared=False)  # B alone on the own voice
    assert list(CAST.assignments) == with_chosen_voices(CAST.assignments, None, own)
    back = _review({"A": "mms_tts_spa", "B": "mms_tts_spa"})
    assert with_chosen_voices(CAST.assignments, back, own) == list(CAST.assignments)
    # The cast written this way gives the segments the same shifts as the choice itself.
    recast = VoiceCast(CAST.voices, tuple(chosen))
    review = _review({"A": "mms_tts_spa:female_high"})
    assert segment_shifts(recast, review, SEGMENTS) == segment_shifts(CAST, review, SEGMENTS)


def test_a_segments_own_voice_is_kept_in_voices_json_and_read_back() -> None:
    review = _review({"A": "mms_tts_spa"}, {2: "mms_tts_spa:male_low"})
    cast = VoiceCast(CAST.voices, CAST.assignments, segment_voices(review))
    stored = json.loads(json.dumps(cast.to_json()))
    assert stored["segments"] == {"2": "mms_tts_spa:male_low"}
    assert VoiceCast.from_json(stored) == cast
    assert "segments" not in CAST.to_json()  # none chosen: the file is as before
    translation = {
        "segments": [
            {"id": s.id, "start": s.start, "end": s.end, "speaker": s.speaker,
             "source_text": s.text, "text": s.translation}
            for s in SEGMENTS
        ]
    }  # fmt: skip
    state = from_stage_files(translation, stored)
    assert [state.voice_of(s) for s in state.segments] == [
        "mms_tts_spa", "mms_tts_spa", "mms_tts_spa:male_low",
    ]  # fmt: skip
