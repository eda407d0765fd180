"""The stage records: each step up keeps what came before, and every document reads and writes
exactly the JSON the stages stored before the records existed (jobs in flight resume).

The ``OLD_*`` values are built the way the stages built them before (``{**segment, ...}``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from polydub.orchestrator.records import (
    Diarization,
    ScoredText,
    Segment,
    Span,
    Speaker,
    Speakers,
    Timed,
    TimedScript,
    Transcribed,
    Transcript,
    Translated,
    TranslatedTranscript,
    Turn,
    VoiceCast,
    deliverable_transcript,
)
from polydub.orchestrator.timing import plan_timing
from polydub.orchestrator.voices import Voice, VoiceAssignment

pytestmark = pytest.mark.unit

OLD_SEGMENTS: dict[str, Any] = {
    "speech": [{"start": 0.4, "end": 1.6}, {"start": 2.0, "end": 3.4}],
    "turns": [
        {"start": 0.0, "end": 1.8, "speaker": "SPEAKER_00"},
        {"start": 1.8, "end": 3.6, "speaker": "SPEAKER_01"},
    ],
    "segments": [
        {"id": 0, "start": 0.4, "end": 1.6, "speaker": "SPEAKER_00"},
        {"id": 1, "start": 2.0, "end": 3.4, "speaker": "SPEAKER_01"},
    ],
}
OLD_TRANSCRIPT: dict[str, Any] = {
    "language": "eng",
    "language_probability": 0.97,
    "segments": [
        {
            **OLD_SEGMENTS["segments"][0],
            "text": "Hello there.",
            "avg_logprob": -0.31,
            "no_speech_prob": 0.02,
        },
        {**OLD_SEGMENTS["segments"][1], "text": "", "avg_logprob": None, "no_speech_prob": None},
    ],
}
NBEST = [[("", -0.1), ("Hola.", -0.2)], [("", -0.5)]]


def old_translated(
    segment: dict[str, Any], candidates: list[tuple[str, float]], chosen: int
) -> Any:
    """As translate wrote a segment into translation.json."""
    return {
        **segment,
        "source_text": segment["text"],
        "text": candidates[chosen][0],
        "chosen": chosen,
        "candidates": [{"text": t, "score": s} for t, s in candidates],
    }


OLD_TRANSLATION: dict[str, Any] = {
    "source": "eng",
    "target": "spa",
    "segments": [
        old_translated(OLD_TRANSCRIPT["segments"][0], NBEST[0], 1),
        old_translated(OLD_TRANSCRIPT["segments"][1], NBEST[1], 0),
    ],
}
OLD_SPEAKERS: dict[str, Any] = {
    "speakers": [
        {
            "speaker": "SPEAKER_01",
            "gender": "female",
            "confidence": 0.8,
            "median_f0": 210.5,
            "speaking_seconds": 1.4,
        },
        {
            "speaker": "SPEAKER_00",
            "gender": "unknown",
            "confidence": 0.0,
            "median_f0": None,
            "speaking_seconds": 1.2,
        },
    ]
}
VOICE = Voice("mms_tts_spa", "male", 131.2)
ASSIGNMENTS = [
    VoiceAssignment("SPEAKER_01", "mms_tts_spa", 4.5, 170.0, True, True),
    VoiceAssignment("SPEAKER_00", "mms_tts_spa", -1.0, 124.0, True, True),
]


def through_json(data: dict[str, Any]) -> Any:
    """What S3 hands back: the stored text, parsed."""
    return json.loads(json.dumps(data))


def test_each_step_up_keeps_what_came_before() -> None:
    segment = Segment(3, 1.0, 2.5, "A")
    heard = segment.with_text("Hi.", avg_logprob=-0.2, no_speech_prob=0.1)
    said = heard.with_translation([ScoredText("", -0.1), ScoredText("Hola.", -0.3)], 1)
    plan = plan_timing([said], [1.5], timeline_end=10.0)
    timed = said.with_timing(plan.segments[0], -2.0)

    assert isinstance(timed, Translated) and isinstance(said, Transcribed)
    assert isinstance(heard, Segment) and segment.duration == 1.5
    assert (timed.id, timed.start, timed.end, timed.speaker) == (3, 1.0, 2.5, "A")
    assert (timed.text, timed.translation, timed.chosen) == ("Hi.", "Hola.", 1)
    assert (timed.avg_logprob, timed.no_speech_prob, timed.semitones) == (-0.2, 0.1, -2.0)
    assert timed.timing.rate == 1.0 and timed.timing.dubbed_duration == 1.5
    with pytest.raises(ValueError, match="no candidate 2"):
        heard.with_translation([ScoredText("Hola.", -0.3)], 2)


def test_records_are_frozen_and_slotted() -> None:
    heard = Segment(0, 0.0, 1.0, "A").with_text("Hi.", avg_logprob=None, no_speech_prob=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        heard.text = "changed"  # type: ignore[misc]
    assert not hasattr(heard, "__dict__")


@pytest.mark.parametrize(
    "record",
    [
        Span(0.5, 1.25),
        Turn(0.0, 2.0, "B"),
        Segment(0, 0.5, 1.25, "B"),
        Transcribed(1, 0.5, 1.25, "B", "Hé, ça va ?", -0.4, None),
        Translated(2, 0.5, 1.25, "B", "Yes.", None, 0.3, "Sí.", 0, (ScoredText("Sí.", -0.2),)),
        ScoredText("", 0.0),
        Speaker("B", "male", None, 0.5, 3.25),
    ],
)
def test_each_record_round_trips_through_its_json(record: Any) -> None:
    assert type(record).from_json(through_json(record.to_json())) == record


def test_timed_round_trips_through_its_json() -> None:
    said = Transcribed(0, 1.0, 2.0, "A", "Hi.", -0.1, 0.0).with_translation(
        [ScoredText("Hola.", -0.1)], 0
    )
    plan = plan_timing([said], [1.5], timeline_end=3.0, synthesized=[2.0])
    timed = said.with_timing(plan.segments[0], 1.5)
    assert Timed.from_json(through_json(timed.to_json())) == timed
    assert timed.timing.borrowed > 0  # a figure beyond the defaults survives too


@pytest.mark.parametrize(
    ("document", "stored"),
    [
        (Diarization, OLD_SEGMENTS),
        (Transcript, OLD_TRANSCRIPT),
        (TranslatedTranscript, OLD_TRANSLATION),
        (Speakers, OLD_SPEAKERS),
    ],
)
def test_documents_read_and_write_the_stored_shape(document: Any, stored: Any) -> None:
    read = document.from_json(through_json(stored))
    assert read.to_json() == stored
    assert document.from_json(through_json(read.to_json())) == read


def test_the_old_translation_reads_as_translated_segments() -> None:
    script = TranslatedTranscript.from_json(through_json(OLD_TRANSLATION))
    first, second = script.segments
    assert (first.text, first.translation, first.chosen) == ("Hello there.", "Hola.", 1)
    assert first.candidates == (ScoredText("", -0.1), ScoredText("Hola.", -0.2))
    assert (first.avg_logprob, first.no_speech_prob) == (-0.31, 0.02)
    assert (second.text, second.translation, second.avg_logprob) == ("", "", None)
    transcript = Transcript.from_json(OLD_TRANSCRIPT)
    assert [
        s.with_translation(s2.candidates, s2.chosen)
        for s, s2 in zip(transcript.segments, script.segments, strict=True)
    ] == list(script.segments)


def test_timing_is_stored_beside_the_translation_as_before() -> None:
    script = TranslatedTranscript.from_json(OLD_TRANSLATION)
    plan = plan_timing(script.segments, [1.5, 0.0], timeline_end=4.0)
    stored = {"segments": [t.to_dict() for t in plan.segments], "semitones": [4.5, -1.0]}

    timed = TimedScript.from_json(through_json(stored), script)
    assert timed.timings == list(plan.segments)
    assert [t.semitones for t in timed.segments] == [4.5, -1.0]
    assert [t.translation for t in timed.segments] == ["Hola.", ""]
    assert timed.to_json() == stored
    with pytest.raises(ValueError, match="segment count"):
        TimedScript.from_json({**stored, "semitones": [4.5]}, script)


def test_voice_cast_reads_the_stored_voices() -> None:
    stored = {
        "voices": [dataclasses.asdict(VOICE)],
        "assignments": [dataclasses.asdict(a) for a in ASSIGNMENTS],
    }
    cast = VoiceCast.from_json(through_json(stored))
    assert cast == VoiceCast((VOICE,), tuple(ASSIGNMENTS)) and cast.to_json() == stored
    assert (cast.semitones("SPEAKER_00"), cast.semitones("nobody")) == (-1.0, 0.0)


def test_the_deliverable_transcript_keeps_its_public_shape() -> None:
    script = TranslatedTranscript.from_json(OLD_TRANSLATION)
    speakers = Speakers.from_json(OLD_SPEAKERS)
    keys = ("id", "start", "end", "speaker", "source_text", "text")
    assert deliverable_transcript("job-1", script, speakers) == {
        "job_id": "job-1",
        "source_language": "eng",
        "target_language": "spa",
        "speakers": OLD_SPEAKERS["speakers"],
        "segments": [{k: s[k] for k in keys} for s in OLD_TRANSLATION["segments"]],
    }


def test_an_unknown_gender_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown gender 'robot'"):
        Speaker.from_json({**OLD_SPEAKERS["speakers"][0], "gender": "robot"})
