"""Segments added and deleted in review: new ids, time order, the rules an added segment meets,
and what a render translates of it."""

from __future__ import annotations

from typing import Any

import pytest

from polydub.errors import InvalidInput
from polydub.orchestrator.records import ScoredText, TranslatedTranscript
from polydub.orchestrator.revise import Review, revised_translation
from polydub.review import SegmentsPatch, apply, from_stage_files
from tests.unit.test_review import KNOWN_VOICES, SPEAKERS, TRANSLATION, VOICES, edit

pytestmark = pytest.mark.unit

ADDED = {"start": 4.2, "end": 4.9, "speaker": "SPEAKER_01", "source_text": "wait"}


def test_added_segments_take_new_ids_in_time_order() -> None:
    state = from_stage_files(TRANSLATION, VOICES)
    changed = edit(state, add=[ADDED, {**ADDED, "start": 7.6, "end": 7.9, "translation": "ya"}])
    assert [s.id for s in changed.segments] == [0, 1, 3, 2, 4]
    added = changed.segments[2]
    assert (added.start, added.end, added.speaker) == (4.2, 4.9, "SPEAKER_01")
    assert (added.source_text, added.translation, added.voice) == ("wait", "", None)
    assert changed.voice_of(added) == "mms_tts_spa"  # its speaker's voice
    assert changed.etag != state.etag


def test_deleted_segments_leave_and_their_ids_are_never_reused() -> None:
    state = from_stage_files(TRANSLATION, VOICES)
    deleted = edit(state, delete=[2])
    assert [s.id for s in deleted.segments] == [0, 1]
    # Segment 2 is still in the render before (taken): an added segment is not taken for it.
    again = apply(
        deleted,
        SegmentsPatch.model_validate({"add": [ADDED]}),
        duration=8.0,
        speakers=SPEAKERS,
        voices=KNOWN_VOICES,
        taken_ids=[0, 1, 2],
    )
    assert [s.id for s in again.segments] == [0, 1, 3]


def test_a_repeated_delete_is_no_error_and_an_unknown_one_is() -> None:
    state = from_stage_files(TRANSLATION, VOICES)
    assert [s.id for s in edit(state, delete=[2, 2, 1, 2]).segments] == [0]
    with pytest.raises(InvalidInput) as raised:
        edit(state, delete=[2, 2, 7])
    assert raised.value.code == "unknown_segment"
    assert "delete[2]" in str(raised.value.detail)


@pytest.mark.parametrize(
    ("patch", "code", "field"),
    [
        ({"delete": [7]}, "unknown_segment", "delete[0]"),
        ({"delete": [0, 1, 2]}, "no_segments", "delete"),
        ({"add": [{**ADDED, "speaker": "SPEAKER_09"}]}, "unknown_speaker", "add[0].speaker"),
        ({"add": [{**ADDED, "voice": "mms_tts_fra"}]}, "unknown_voice", "add[0].voice"),
        ({"add": [{**ADDED, "source_text": " "}]}, "empty_segment", "add[0].source_text"),
        ({"add": [{**ADDED, "start": 3.5}]}, "segments_overlap", "segment 3"),
        ({"add": [{**ADDED, "end": 8.5}]}, "segment_outside_media", "segment 3"),
    ],
)
def test_additions_and_deletions_are_validated(
    patch: dict[str, Any], code: str, field: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        edit(from_stage_files(TRANSLATION, VOICES), **patch)
    assert refused.value.code == code
    assert refused.value.detail == {"field": field}


def test_an_added_segment_needs_its_times_and_speaker() -> None:
    with pytest.raises(ValueError, match="speaker"):
        SegmentsPatch.model_validate({"add": [{"start": 1.0, "end": 2.0, "source_text": "x"}]})
    with pytest.raises(ValueError):
        SegmentsPatch.model_validate({"add": [{**ADDED, "start": float("inf")}]})


async def test_a_render_translates_an_added_segment_and_drops_a_deleted_one() -> None:
    base = TranslatedTranscript.from_json(TRANSLATION)
    state = edit(
        from_stage_files(TRANSLATION, VOICES),
        delete=[1],
        add=[ADDED, {**ADDED, "start": 7.6, "end": 7.9, "source_text": "", "translation": "ya"}],
    )
    asked: list[list[str]] = []

    async def translate(texts: list[str], source: str, target: str) -> list[list[ScoredText]]:
        asked.append(texts)
        return [[ScoredText(f"<{t}>", -0.5)] for t in texts]

    script, again = await revised_translation(
        Review(state, "base-key", None, 2), base, translate, lambda c, s: 0
    )
    assert asked == [["wait"]] and again == 1  # only the added segment without a translation
    assert [(s.id, s.translation) for s in script.segments] == [
        (0, "hola 0"),
        (3, "<wait>"),
        (2, "hola 2"),
        (4, "ya"),
    ]
