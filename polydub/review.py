"""Review and re-dub: a target language's segments as a person edits them, shared by every tier.

The *editable state* of a language is, per segment, who speaks when, what was said and what the
dub says, and the voice of each speaker. It starts as what the translate and assign_voices
stages wrote (``from_stage_files``); ``apply`` validates an edit against it and returns the new
state; ``etag`` names a state, so an edit made on an older one is refused (If-Match).
A render hands the edited state to the worker, which re-translates the segments whose source
text changed (and whose translation did not), and re-synthesises only what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from polydub.errors import InvalidInput
from polydub.schemas import MAX_TIME_SECONDS, FiniteFloat

MAX_TEXT_CHARS = 2000  # per segment: a dub line, never a document
MIN_SEGMENT_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ReviewSegment:
    id: int
    start: float
    end: float
    speaker: str
    source_text: str
    translation: str
    voice: str | None = None  # this segment's own voice; None: its speaker's

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "start": self.start,
            "end": self.end,
            "speaker": self.speaker,
            "source_text": self.source_text,
            "translation": self.translation,
            "voice": self.voice,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewSegment:
        voice = data.get("voice")
        return cls(
            int(data["id"]),
            float(data["start"]),
            float(data["end"]),
            str(data["speaker"]),
            str(data["source_text"]),
            str(data["translation"]),
            None if voice is None else str(voice),
        )


@dataclass(frozen=True, slots=True)
class ReviewState:
    segments: tuple[ReviewSegment, ...]
    voices: tuple[tuple[str, str], ...]  # (speaker, voice), sorted by speaker

    @property
    def speaker_voices(self) -> dict[str, str]:
        return dict(self.voices)

    def voice_of(self, segment: ReviewSegment) -> str | None:
        return segment.voice or self.speaker_voices.get(segment.speaker)

    def to_json(self) -> dict[str, Any]:
        return {
            "segments": [s.to_json() for s in self.segments],
            "voices": dict(self.voices),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewState:
        return cls(
            tuple(ReviewSegment.from_json(s) for s in data["segments"]),
            tuple(sorted((str(k), str(v)) for k, v in dict(data.get("voices") or {}).items())),
        )

    @property
    def etag(self) -> str:
        """A strong ETag of the editable state (quoted, as HTTP writes it)."""
        body = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode()
        return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def from_stage_files(
    translation: Mapping[str, Any], voices: Mapping[str, Any] | None
) -> ReviewState:
    """The state the stages left: translation.json's segments (its ``source_text`` is what was
    said, its ``text`` the dub) and voices.json's assignments (None for a subtitles-only job)."""
    # A segment's own voice, where a reviewer chose one (voices.json keeps it across renders).
    own = {int(i): str(v) for i, v in ((voices or {}).get("segments") or {}).items()}
    segments = tuple(
        ReviewSegment(
            int(s["id"]),
            float(s["start"]),
            float(s["end"]),
            str(s["speaker"]),
            str(s["source_text"]),
            str(s["text"]),
            own.get(int(s["id"])),
        )
        for s in translation["segments"]
    )
    cast = sorted(
        (str(a["speaker"]), str(a["voice"])) for a in (voices or {}).get("assignments", [])
    )
    return ReviewState(segments, tuple(cast))


# -- the wire ---------------------------------------------------------------------------------

Seconds = Annotated[FiniteFloat, Field(ge=0, le=MAX_TIME_SECONDS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=100)]


class SegmentEdit(BaseModel):
    """One segment's changes; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: Annotated[int, Field(ge=0)]
    start: Seconds | None = None
    end: Seconds | None = None
    speaker: Name | None = None
    source_text: Text | None = None
    translation: Text | None = None
    voice: Name | None = None


class SegmentAdd(BaseModel):
    """A segment the transcript missed. With ``translation`` it is spoken as written; with
    ``source_text`` alone it is translated on render."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    start: Seconds
    end: Seconds
    speaker: Name
    source_text: Text = ""
    translation: Text = ""
    voice: Name | None = None


class SegmentsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    segments: Annotated[list[SegmentEdit], Field(max_length=10_000)] = []
    # Added segments get new ids (never one a segment had); deleted ones are silent in a render.
    add: Annotated[list[SegmentAdd], Field(max_length=1000)] = []
    delete: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=10_000)] = []
    voices: Annotated[dict[Name, Name], Field(max_length=1000)] = {}  # speaker -> voice
    allow_overlap: bool = False  # segments may overlap (two people talking at once)


class SegmentOut(BaseModel):
    id: int
    start: float
    end: float
    speaker: str
    source_text: str
    translation: str
    voice: str | None
    fit: dict[str, Any] | None = None  # the last render's timing figures (rate, stretch, ...)


class SegmentsOut(BaseModel):
    job_id: str
    language: str
    etag: str
    version: int  # of the current outputs
    edited: bool  # edits wait for a render
    voices: dict[str, str]  # speaker -> voice
    segments: list[SegmentOut]


class RenderOut(BaseModel):
    job_id: str
    language: str
    version: int  # the version this render makes
    status: str


class VoiceOut(BaseModel):
    id: str
    language: str
    model: str
    gender: str | None = None  # a pitch variant's range; None: the model's own voice
    f0: float | None = None  # Hz, a pitch variant's median F0


class VoicesOut(BaseModel):
    voices: list[VoiceOut]


# -- edits ------------------------------------------------------------------------------------


def apply(
    state: ReviewState,
    patch: SegmentsPatch,
    *,
    duration: float,
    speakers: Iterable[str],
    voices: Iterable[str],
    taken_ids: Iterable[int] = (),
) -> ReviewState:
    """The state with ``patch`` applied (edits, then deletions, then additions, numbered after
    every id in the state or in ``taken_ids``: the segments of the render before, so an added
    segment is never taken for a deleted one); InvalidInput (with the field at fault in
    ``detail``) when a segment is unknown, a time is outside the media or overlaps, a speaker
    or a voice is unknown, or nothing would be left to say."""
    known_speakers, known_voices = set(speakers), set(voices)
    by_id = {s.id: s for s in state.segments}
    edited = dict(by_id)
    moved: set[int] = set()  # segments whose times this patch sets (edited or added)
    for n, edit in enumerate(patch.segments):
        where = f"segments[{n}]"
        segment = edited.get(edit.id)
        if segment is None:
            raise _invalid(f"no segment {edit.id}", "unknown_segment", f"{where}.id")
        changes = edit.model_dump(exclude_unset=True, exclude={"id"})
        for name in ("start", "end", "speaker", "voice", "source_text", "translation"):
            if name in changes and changes[name] is None:
                raise _invalid(f"{name} cannot be null", "invalid_edit", f"{where}.{name}")
        if "speaker" in changes and changes["speaker"] not in known_speakers:
            raise _invalid(
                f"unknown speaker {changes['speaker']!r}; known: {', '.join(sorted(known_speakers))}",
                "unknown_speaker",
                f"{where}.speaker",
            )
        if "voice" in changes and changes["voice"] not in known_voices:
            raise _unknown_voice(changes["voice"], known_voices, f"{where}.voice")
        edited[edit.id] = replace(segment, **changes)
        if {"start", "end"} & changes.keys():
            moved.add(edit.id)
    cast = state.speaker_voices
    for speaker, voice in patch.voices.items():
        if speaker not in known_speakers:
            raise _invalid(f"unknown speaker {speaker!r}", "unknown_speaker", f"voices.{speaker}")
        if voice not in known_voices:
            raise _unknown_voice(voice, known_voices, f"voices.{speaker}")
        cast[speaker] = voice
    deleted: set[int] = set()  # a repeated id is no error
    for n, gone in enumerate(patch.delete):
        if edited.pop(gone, None) is None and gone not in deleted:
            raise _invalid(f"no segment {gone}", "unknown_segment", f"delete[{n}]")
        deleted.add(gone)
    next_id = max([*by_id, *taken_ids, -1]) + 1
    for n, new in enumerate(patch.add):
        added = _added(new, next_id + n, f"add[{n}]", known_speakers, known_voices)
        edited[added.id] = added
        moved.add(added.id)
    if not edited:
        raise _invalid("a language keeps at least one segment", "no_segments", "delete")
    kept = [edited[s.id] for s in state.segments if s.id in edited]
    if patch.add:  # in time order, where the added ones belong
        kept = sorted(edited.values(), key=lambda s: (s.start, s.id))
    segments = tuple(kept)
    check_times(segments, duration, allow_overlap=patch.allow_overlap, checked=moved)
    return ReviewState(segments, tuple(sorted(cast.items())))


def _added(
    new: SegmentAdd, id_: int, where: str, known_speakers: set[str], known_voices: set[str]
) -> ReviewSegment:
    if new.speaker not in known_speakers:
        raise _invalid(
            f"unknown speaker {new.speaker!r}; known: {', '.join(sorted(known_speakers))}",
            "unknown_speaker",
            f"{where}.speaker",
        )
    if new.voice is not None and new.voice not in known_voices:
        raise _unknown_voice(new.voice, known_voices, f"{where}.voice")
    if not (new.source_text.strip() or new.translation.strip()):
        raise _invalid(
            "an added segment needs its source_text (translated on render) or its translation",
            "empty_segment",
            f"{where}.source_text",
        )
    return ReviewSegment(
        id_, new.start, new.end, new.speaker, new.source_text, new.translation, new.voice
    )


def check_times(
    segments: Sequence[ReviewSegment],
    duration: float,
    *,
    allow_overlap: bool = False,
    checked: Collection[int] | None = None,
) -> None:
    """Every segment inside the media and long enough; none overlapping another unless allowed.
    ``checked``: the ids whose times an edit set (None: all). Only those are checked, against
    every segment: the pipeline's own overlaps (two people talking at once) never block an
    edit of something else, such as a translation."""
    if checked is not None:
        checked = set(checked)
    mine = [s for s in segments if checked is None or s.id in checked]
    for segment in mine:
        where = f"segment {segment.id}"
        if not (math.isfinite(segment.start) and math.isfinite(segment.end)):
            raise _invalid(f"{where}: times must be finite", "invalid_times", where)
        if segment.start < 0 or segment.end > duration + 1e-6:
            raise _invalid(
                f"{where}: {segment.start:.3f}-{segment.end:.3f} s is outside the media"
                f" (0-{duration:.3f} s)",
                "segment_outside_media",
                where,
            )
        if segment.end - segment.start < MIN_SEGMENT_SECONDS:
            raise _invalid(
                f"{where}: must end at least {MIN_SEGMENT_SECONDS} s after it starts",
                "invalid_times",
                where,
            )
    if allow_overlap:
        return
    ordered = sorted(segments, key=lambda s: (s.start, s.end, s.id))
    for segment in sorted(mine, key=lambda s: (s.start, s.end, s.id)):
        for other in ordered:
            if other.start >= segment.end - 1e-6:
                break  # the rest start later still
            if other.id == segment.id or other.end <= segment.start + 1e-6:
                continue
            before, after = sorted((segment, other), key=lambda s: (s.start, s.end, s.id))
            raise _invalid(
                f"segment {after.id} starts at {after.start:.3f} s, inside segment {before.id}"
                f" (until {before.end:.3f} s); set allow_overlap to keep both",
                "segments_overlap",
                f"segment {after.id}",
            )


# -- subtitles in, matched to segments by time --------------------------------------------------

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_CUE_TIMES = re.compile(rf"^\s*({_TIME.pattern})\s*-->\s*({_TIME.pattern})")


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str


def parse_cues(text: str) -> list[Cue]:
    """The cues of an SRT or WebVTT file (numbers, headers, notes and styling are skipped)."""
    cues: list[Cue] = []
    for block in re.split(r"\r?\n\s*\r?\n", text.replace("\ufeff", "")):
        lines = block.strip().splitlines()
        for n, line in enumerate(lines):
            match = _CUE_TIMES.match(line)
            if match:
                words = " ".join(x.strip() for x in lines[n + 1 :] if x.strip())
                words = re.sub(r"<[^>]+>", "", words)  # VTT voice/styling tags
                cues.append(Cue(_seconds(match[1]), _seconds(match[6]), words))
                break
    return cues


def _seconds(stamp: str) -> float:
    match = _TIME.fullmatch(stamp.strip())
    if match is None:
        raise InvalidInput(f"not a subtitle time: {stamp!r}", code="invalid_subtitles")
    hours, minutes, secs, frac = match.groups()
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(secs) + int(frac.ljust(3, "0")) / 1000


def edits_from_cues(segments: Sequence[ReviewSegment], cues: Sequence[Cue]) -> SegmentsPatch:
    """A translation edit per segment whose text differs from the cues it overlaps most (a
    segment's cues in time order, joined: a translator may have split a line)."""
    texts: dict[int, list[str]] = {}
    for cue in sorted(cues, key=lambda c: c.start):
        best, overlap = None, 0.0
        for segment in segments:
            shared = min(cue.end, segment.end) - max(cue.start, segment.start)
            if shared > overlap:
                best, overlap = segment, shared
        if best is not None and cue.text:
            texts.setdefault(best.id, []).append(cue.text)
    # A cue holds lines: compared with whitespace collapsed, a line break is no edit.
    edits = [
        SegmentEdit(id=s.id, translation=" ".join(texts[s.id]))
        for s in segments
        if s.id in texts and " ".join(texts[s.id]).split() != s.translation.split()
    ]
    return SegmentsPatch(segments=edits)


def _unknown_voice(voice: str, known: set[str], field: str) -> InvalidInput:
    return _invalid(
        f"unknown voice {voice!r}; this language has {', '.join(sorted(known)) or 'none'}",
        "unknown_voice",
        field,
    )


def _invalid(message: str, code: str, field: str) -> InvalidInput:
    return InvalidInput(message, code=code, detail={"field": field})
