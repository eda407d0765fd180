"""What the stages hand each other, as frozen records, and the only code that knows their JSON.

A segment gains facts as it goes down the pipeline, one record per step, each a subtype of the one
before (in the spirit of faster-whisper's ``Segment`` / ``TranscriptionInfo``)::

    Segment (who speaks when)          diarize      segments.json
      -> Transcribed (+ what was said)  transcribe   transcript.json
        -> Translated (+ what to say)    translate    translation.json
          -> Timed (+ where it goes)      synthesize   timing.json (beside translation.json)

Each step up is a method of the step below (``segment.with_text(...)``, ``with_translation``,
``with_timing``). Stages pass their results through S3 (a redelivered job resumes on another
worker), so each document below reads and writes exactly the JSON that the stages have always
stored: a job that was in flight during an upgrade resumes on the new code.
Two names differ between record and file: a ``Translated``'s ``text`` (what was said) is stored
as ``source_text`` and its ``translation`` as ``text``, as the subtitle and transcript readers of
that file expect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Self, get_args

from polydub.orchestrator.timing import SegmentTiming
from polydub.orchestrator.voices import Gender, SpeakerProfile, Voice, VoiceAssignment

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of the media, in seconds: a speech region the VAD heard."""

    start: float
    end: float

    def to_json(self) -> Json:
        return {"start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(float(data["start"]), float(data["end"]))


@dataclass(frozen=True, slots=True)
class Turn:
    """One speaker's diarization turn (it may hold pauses and non-speech)."""

    start: float
    end: float
    speaker: str

    def to_json(self) -> Json:
        return {"start": self.start, "end": self.end, "speaker": self.speaker}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(float(data["start"]), float(data["end"]), str(data["speaker"]))


@dataclass(frozen=True, slots=True)
class Segment:
    """One speaker's stretch of speech: the unit that is transcribed, translated and dubbed."""

    id: int  # position in the job's segment list, from 0
    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    def with_text(
        self, text: str, *, avg_logprob: float | None, no_speech_prob: float | None
    ) -> Transcribed:
        return Transcribed(
            **_fields_of(self, Segment),
            text=text,
            avg_logprob=avg_logprob,
            no_speech_prob=no_speech_prob,
        )

    def to_json(self) -> Json:
        return {"id": self.id, "start": self.start, "end": self.end, "speaker": self.speaker}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(int(data["id"]), float(data["start"]), float(data["end"]), str(data["speaker"]))


@dataclass(frozen=True, slots=True)
class Transcribed(Segment):
    text: str  # what the speaker said, in the source language ("" where Whisper heard nothing)
    avg_logprob: float | None  # Whisper's mean token log-probability; None without a decode
    no_speech_prob: float | None  # the highest no-speech probability of its decoded parts

    def with_translation(self, candidates: Sequence[ScoredText], chosen: int) -> Translated:
        """The segment to speak ``candidates[chosen]`` (the n-best, best first)."""
        if not 0 <= chosen < len(candidates):
            raise ValueError(f"segment {self.id}: no candidate {chosen} of {len(candidates)}")
        return Translated(
            **_fields_of(self, Transcribed),
            translation=candidates[chosen].text,
            chosen=chosen,
            candidates=tuple(candidates),
        )

    def to_json(self) -> Json:
        return {
            **Segment.to_json(self),
            "text": self.text,
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            **_fields_of(Segment.from_json(data), Segment),
            text=str(data["text"]),
            avg_logprob=_optional_float(data.get("avg_logprob")),
            no_speech_prob=_optional_float(data.get("no_speech_prob")),
        )


@dataclass(frozen=True, slots=True)
class ScoredText:
    """One of a segment's n-best translations."""

    text: str
    score: float  # length-normalised log-probability, higher is better

    def to_json(self) -> Json:
        return {"text": self.text, "score": self.score}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data["text"]), float(data["score"]))


@dataclass(frozen=True, slots=True)
class Translated(Transcribed):
    translation: str  # what the dub says: ``candidates[chosen].text``
    chosen: int
    candidates: tuple[ScoredText, ...]  # the n-best, best first

    def with_timing(self, timing: SegmentTiming, semitones: float) -> Timed:
        return Timed(**_fields_of(self, Translated), timing=timing, semitones=semitones)

    def to_json(self) -> Json:
        return {
            **Transcribed.to_json(self),
            "source_text": self.text,
            "text": self.translation,
            "chosen": self.chosen,
            "candidates": [c.to_json() for c in self.candidates],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        transcribed = Transcribed.from_json({**data, "text": data["source_text"]})
        return cls(
            **_fields_of(transcribed, Transcribed),
            translation=str(data["text"]),
            chosen=int(data["chosen"]),
            candidates=tuple(ScoredText.from_json(c) for c in data["candidates"]),
        )


@dataclass(frozen=True, slots=True)
class Timed(Translated):
    timing: SegmentTiming  # rate, stretch, borrowing and overflow of its dub
    semitones: float  # pitch shift of the voice for this segment's speaker

    def to_json(self) -> Json:
        """The whole record; timing.json stores only the part it adds (``TimedScript``)."""
        return {
            **Translated.to_json(self),
            "timing": self.timing.to_dict(),
            "semitones": self.semitones,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        translated = Translated.from_json(data)
        return cls(
            **_fields_of(translated, Translated),
            timing=_timing_from_json(data["timing"]),
            semitones=float(data["semitones"]),
        )


@dataclass(frozen=True, slots=True)
class Diarization:
    """segments.json: what the VAD heard, who spoke when, and the segments made of both."""

    speech: tuple[Span, ...]
    turns: tuple[Turn, ...]
    segments: tuple[Segment, ...]

    def to_json(self) -> Json:
        return {
            "speech": [s.to_json() for s in self.speech],
            "turns": [t.to_json() for t in self.turns],
            "segments": [s.to_json() for s in self.segments],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            tuple(Span.from_json(s) for s in data["speech"]),
            tuple(Turn.from_json(t) for t in data["turns"]),
            tuple(Segment.from_json(s) for s in data["segments"]),
        )


@dataclass(frozen=True, slots=True)
class Transcript:
    """transcript.json: the segments with their words, and the language they are in."""

    language: str  # ISO 639-3, detected or given
    language_probability: float
    segments: tuple[Transcribed, ...]

    def to_json(self) -> Json:
        return {
            "language": self.language,
            "language_probability": self.language_probability,
            "segments": [s.to_json() for s in self.segments],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            str(data["language"]),
            float(data["language_probability"]),
            tuple(Transcribed.from_json(s) for s in data["segments"]),
        )


@dataclass(frozen=True, slots=True)
class TranslatedTranscript:
    """translation.json: one target language's translated segments."""

    source: str  # ISO 639-3
    target: str
    segments: tuple[Translated, ...]

    def to_json(self) -> Json:
        return {
            "source": self.source,
            "target": self.target,
            "segments": [s.to_json() for s in self.segments],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        segments = tuple(Translated.from_json(s) for s in data["segments"])
        return cls(str(data["source"]), str(data["target"]), segments)


@dataclass(frozen=True, slots=True)
class TimedScript:
    """timing.json: per segment the dub's timing and the pitch shift of its voice.

    Stored as two lists beside translation.json (the segments' words live there), so it is read
    with that file's ``TranslatedTranscript``.
    """

    segments: tuple[Timed, ...]

    @property
    def timings(self) -> list[SegmentTiming]:
        return [s.timing for s in self.segments]

    def to_json(self) -> Json:
        return {
            "segments": [s.timing.to_dict() for s in self.segments],
            "semitones": [s.semitones for s in self.segments],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], script: TranslatedTranscript) -> Self:
        timings, semitones = data["segments"], data["semitones"]
        if not len(timings) == len(semitones) == len(script.segments):
            raise ValueError("timing.json and translation.json disagree on the segment count")
        return cls(
            tuple(
                s.with_timing(_timing_from_json(t), float(p))
                for s, t, p in zip(script.segments, timings, semitones, strict=True)
            )
        )


@dataclass(frozen=True, slots=True)
class Speaker(SpeakerProfile):
    """A speaker as the gender stage measured them (``voices.SpeakerProfile`` plus how sure and
    how much they speak)."""

    confidence: float  # of the gender label
    speaking_seconds: float

    def to_json(self) -> Json:
        return {
            "speaker": self.speaker,
            "gender": self.gender,
            "confidence": self.confidence,
            "median_f0": self.median_f0,
            "speaking_seconds": self.speaking_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            str(data["speaker"]),
            _gender(data["gender"]),
            _optional_float(data["median_f0"]),
            float(data["confidence"]),
            float(data["speaking_seconds"]),
        )


@dataclass(frozen=True, slots=True)
class Speakers:
    """speakers.json: the job's speakers, those who speak most first."""

    speakers: tuple[Speaker, ...]

    def to_json(self) -> Json:
        return {"speakers": [s.to_json() for s in self.speakers]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(tuple(Speaker.from_json(s) for s in data["speakers"]))


@dataclass(frozen=True, slots=True)
class VoiceCast:
    """voices.json: one target language's voices and the voice (and shift) of each speaker."""

    voices: tuple[Voice, ...]
    assignments: tuple[VoiceAssignment, ...]
    # A reviewer's voice for single segments (id, voice), kept here so a render keeps them.
    segments: tuple[tuple[int, str], ...] = ()

    def semitones(self, speaker: str) -> float:
        """The speaker's pitch shift; 0 for a speaker without an assignment."""
        return next((a.semitones for a in self.assignments if a.speaker == speaker), 0.0)

    def to_json(self) -> Json:
        data: Json = {
            "voices": [asdict(v) for v in self.voices],
            "assignments": [asdict(a) for a in self.assignments],
        }
        if self.segments:
            data["segments"] = {str(i): v for i, v in self.segments}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        voices = tuple(
            Voice(str(v["id"]), _gender(v["gender"]), float(v["median_f0"])) for v in data["voices"]
        )
        assignments = tuple(
            VoiceAssignment(
                str(a["speaker"]),
                str(a["voice"]),
                float(a["semitones"]),
                float(a["f0"]),
                bool(a["shared"]),
                bool(a["separated"]),
            )
            for a in data["assignments"]
        )
        segments = tuple(sorted((int(i), str(v)) for i, v in (data.get("segments") or {}).items()))
        return cls(voices, assignments, segments)


def deliverable_transcript(job_id: str, script: TranslatedTranscript, speakers: Speakers) -> Json:
    """The ``transcript`` artifact users download: who said what, when, and its translation."""
    return {
        "job_id": job_id,
        "source_language": script.source,
        "target_language": script.target,
        "speakers": [s.to_json() for s in speakers.speakers],
        "segments": [
            {**Segment.to_json(s), "source_text": s.text, "text": s.translation}
            for s in script.segments
        ],
    }


def _fields_of(record: Segment, step: type[Segment]) -> Json:
    """The fields ``step`` declares, read from ``record`` (a ``step`` or a step above it)."""
    return {f.name: getattr(record, f.name) for f in fields(step)}


def _timing_from_json(data: Mapping[str, Any]) -> SegmentTiming:
    # The stored dict also holds derived values (original_duration, dubbed_end): not fields.
    return SegmentTiming(**{f.name: data[f.name] for f in fields(SegmentTiming)})


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _gender(value: Any) -> Gender:
    if value not in get_args(Gender):
        raise ValueError(f"unknown gender {value!r}")
    gender: Gender = value
    return gender
