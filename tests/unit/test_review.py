"""The editable state of a language's segments: its ETag, the edit rules, and what a render
re-translates."""

from __future__ import annotations

from typing import Any

import pytest

from polydub.errors import InvalidInput
from polydub.orchestrator.records import ScoredText, TranslatedTranscript
from polydub.orchestrator.revise import Review, revised_translation
from polydub.review import (
    ReviewState,
    SegmentsPatch,
    apply,
    edits_from_cues,
    from_stage_files,
    parse_cues,
)

TRANSLATION: dict[str, Any] = {
    "source": "eng",
    "target": "spa",
    "segments": [
        {
            "id": i,
            "start": start,
            "end": end,
            "speaker": speaker,
            "text": f"hola {i}",
            "source_text": f"hello {i}",
            "avg_logprob": -0.2,
            "no_speech_prob": 0.01,
            "chosen": 0,
            "candidates": [{"text": f"hola {i}", "score": -0.1}],
        }
        for i, (start, end, speaker) in enumerate(
            [(0.5, 2.0, "SPEAKER_00"), (2.5, 4.0, "SPEAKER_01"), (5.0, 7.5, "SPEAKER_00")]
        )
    ],
}
VOICES = {
    "voices": [{"id": "mms_tts_spa", "gender": "male", "median_f0": 120.0}],
    "assignments": [
        {"speaker": s, "voice": "mms_tts_spa", "semitones": 0.0, "f0": 120.0}
        for s in ("SPEAKER_00", "SPEAKER_01")
    ],
}
SPEAKERS = {"SPEAKER_00", "SPEAKER_01"}
KNOWN_VOICES = {"mms_tts_spa"}


def edit(state: ReviewState, **patch: Any) -> ReviewState:
    return apply(
        state,
        SegmentsPatch.model_validate(patch),
        duration=8.0,
        speakers=SPEAKERS,
        voices=KNOWN_VOICES,
    )


def test_the_state_the_stages_left_and_its_etag() -> None:
    state = from_stage_files(TRANSLATION, VOICES)
    assert [s.translation for s in state.segments] == ["hola 0", "hola 1", "hola 2"]
    assert state.voice_of(state.segments[1]) == "mms_tts_spa"
    assert ReviewState.from_json(state.to_json()) == state
    assert state.etag == from_stage_files(TRANSLATION, VOICES).etag
    changed = edit(state, segments=[{"id": 1, "translation": "adiós"}])
    assert changed.etag != state.etag
    assert changed.segments[1].translation == "adiós" and changed.segments[0] == state.segments[0]


@pytest.mark.parametrize(
    ("patch", "code"),
    [
        ({"segments": [{"id": 9, "translation": "x"}]}, "unknown_segment"),
        ({"segments": [{"id": 0, "end": 9.0}]}, "segment_outside_media"),
        ({"segments": [{"id": 0, "start": 1.9, "end": 1.92}]}, "invalid_times"),
        ({"segments": [{"id": 0, "end": 3.0}]}, "segments_overlap"),
        ({"segments": [{"id": 0, "speaker": "SPEAKER_07"}]}, "unknown_speaker"),
        ({"segments": [{"id": 0, "voice": "mms_tts_fra"}]}, "unknown_voice"),
        ({"voices": {"SPEAKER_00": "mms_tts_fra"}}, "unknown_voice"),
        ({"voices": {"SPEAKER_09": "mms_tts_spa"}}, "unknown_speaker"),
        ({"segments": [{"id": 0, "translation": None}]}, "invalid_edit"),
    ],
)
def test_edits_are_validated(patch: dict[str, Any], code: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        edit(from_stage_files(TRANSLATION, VOICES), **patch)
    assert refused.value.code == code
    assert isinstance(refused.value.detail, dict) and "field" in refused.value.detail


def test_overlap_when_allowed_retime_and_voices() -> None:
    state = from_stage_files(TRANSLATION, VOICES)
    both = edit(state, segments=[{"id": 0, "end": 3.0}], allow_overlap=True)
    assert both.segments[0].end == 3.0
    moved = edit(state, segments=[{"id": 2, "start": 4.5, "speaker": "SPEAKER_01"}])
    assert (moved.segments[2].start, moved.segments[2].speaker) == (4.5, "SPEAKER_01")
    voiced = edit(state, voices={"SPEAKER_01": "mms_tts_spa"})
    assert voiced.speaker_voices["SPEAKER_01"] == "mms_tts_spa"


def test_overlaps_the_pipeline_left_never_block_an_edit_elsewhere() -> None:
    """Two speakers talking at once give overlapping segments; editing a translation, or moving
    another segment, must not be refused for them (a fresh-clone e2e run hit exactly that). A
    segment moved into another is still refused, also where a third lies between them."""
    talking_at_once = {
        **TRANSLATION,
        "segments": [
            {**TRANSLATION["segments"][0], "start": 0.5, "end": 6.0},  # long, under the others
            *TRANSLATION["segments"][1:],
        ],
    }
    state = from_stage_files(talking_at_once, VOICES)
    words = edit(state, segments=[{"id": s.id, "translation": "palabras"} for s in state.segments])
    assert {s.translation for s in words.segments} == {"palabras"}
    # segment 2 (5.0-7.5) already overlaps segment 0; moving it later is fine
    assert edit(state, segments=[{"id": 2, "start": 6.2}]).segments[2].start == 6.2
    # segment 1 moved to 6.5-7.0 overlaps segment 2 only; 0 ends before it
    with pytest.raises(InvalidInput) as refused:
        edit(state, segments=[{"id": 1, "start": 6.5, "end": 7.0}])
    assert refused.value.code == "segments_overlap"
    # a segment moved to start under 0 (which reaches past 1) is refused against 0 itself
    plain = from_stage_files(TRANSLATION, VOICES)
    stretched = edit(plain, segments=[{"id": 0, "end": 4.8}], allow_overlap=True)
    with pytest.raises(InvalidInput) as refused:
        edit(stretched, segments=[{"id": 2, "start": 4.5}])
    assert refused.value.code == "segments_overlap"
    assert "inside segment 0" in refused.value.message


def test_wire_refuses_non_finite_and_unknown_fields() -> None:
    with pytest.raises(ValueError):
        SegmentsPatch.model_validate({"segments": [{"id": 0, "start": float("nan")}]})
    with pytest.raises(ValueError):
        SegmentsPatch.model_validate({"segments": [{"id": 0, "text": "x"}]})


async def test_a_render_retranslates_only_changed_source_text() -> None:
    base = TranslatedTranscript.from_json(TRANSLATION)
    state = edit(
        from_stage_files(TRANSLATION, VOICES),
        segments=[
            {"id": 0, "source_text": "good morning"},  # re-translated
            {"id": 1, "translation": "buenas"},  # a person's words, kept as they are
            {"id": 2, "source_text": "bye", "translation": "chao"},  # both: the translation wins
        ],
    )
    asked: list[list[str]] = []

    async def translate(texts: list[str], source: str, target: str) -> list[list[ScoredText]]:
        asked.append(texts)
        assert (source, target) == ("eng", "spa")
        return [[ScoredText(f"<{t}>", -0.5), ScoredText("", -0.1)] for t in texts]

    review = Review(state, "base-key", -3.0, 2)
    script, again = await revised_translation(review, base, translate, lambda c, s: 0)
    assert asked == [["good morning"]] and again == 1
    assert [s.translation for s in script.segments] == ["<good morning>", "buenas", "chao"]
    assert [s.text for s in script.segments] == ["good morning", "hello 1", "bye"]
    assert script.segments[1].candidates == (ScoredText("buenas", 0.0),)
    assert (script.source, script.target) == ("eng", "spa")


SRT = """1
00:00:00,400 --> 00:00:01,900
hola 0

2
00:00:02,600 --> 00:00:03,200
<i>buenas</i>

3
00:00:03,200 --> 00:00:04,000
tardes
"""
VTT = """WEBVTT

NOTE made by hand

00:05.100 --> 00:07.400
<v Ana>adiós a todos
"""


def test_subtitles_are_matched_to_segments_by_time() -> None:
    state = from_stage_files(TRANSLATION, VOICES)
    cues = parse_cues(SRT) + parse_cues(VTT)
    assert [(c.start, c.end) for c in cues][-1] == (5.1, 7.4)
    patch = edits_from_cues(state.segments, cues)
    # Segment 0 says what its cue says: unchanged; segment 1's two cues are joined.
    assert [(e.id, e.translation) for e in patch.segments] == [
        (1, "buenas tardes"),
        (2, "adiós a todos"),
    ]
    assert edit(state, **patch.model_dump(exclude_unset=True)).segments[1].translation == (
        "buenas tardes"
    )
