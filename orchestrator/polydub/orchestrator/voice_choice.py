"""The pitch each segment is rendered at: the automatic cast's, or a reviewer's chosen voice.

A reviewer picks a voice per speaker (or per segment) among ``polydub.voice_catalog``'s: the
model's own voice keeps the cast's shift for that speaker; a variant renders the same speech at
the variant's F0 instead. Speech is the same either way (the TTS is asked the same thing, so the
speech cache serves it), only the shift differs, and segments of an unchanged speaker keep the
shift they had. A render runs assign_voices again (polydub.api.db.review.RENDER_STAGES), which
writes a speaker's chosen voice into voices.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from polydub.orchestrator.records import Translated, VoiceCast
from polydub.orchestrator.revise import Review
from polydub.orchestrator.voices import Voice, VoiceAssignment
from polydub.voice_catalog import parse, variant_shift


def with_chosen_voices(
    assignments: Sequence[VoiceAssignment], review: Review | None, own: Voice
) -> list[VoiceAssignment]:
    """The automatic cast with each speaker's chosen variant (a reviewer's ``voices``) in its
    place, so voices.json, which the segments are read back from, keeps the choice after a
    render; the model's own voice (or none chosen) keeps the automatic assignment."""
    chosen = review.state.speaker_voices if review is not None else {}
    cast = []
    for a in assignments:
        voice = parse(chosen[a.speaker]) if a.speaker in chosen else None
        if voice is None or voice.variant is None or voice.model != own.id:
            cast.append(a)
            continue
        shift = variant_shift(voice.variant, own.median_f0)
        f0 = round(own.median_f0 * 2.0 ** (shift / 12.0), 1)
        cast.append(replace(a, voice=voice.id, semitones=shift, f0=f0, separated=True))
    voices = [a.voice for a in cast]
    return [replace(a, shared=voices.count(a.voice) > 1) for a in cast]


def segment_voices(review: Review | None) -> tuple[tuple[int, str], ...]:
    """The voices a reviewer gave single segments (id, voice), for voices.json."""
    if review is None:
        return ()
    return tuple((s.id, s.voice) for s in review.state.segments if s.voice)


def segment_shifts(
    cast: VoiceCast, review: Review | None, segments: Sequence[Translated]
) -> list[float]:
    """Per segment, the pitch shift (semitones) its voice is rendered with."""
    chosen: dict[int, str | None] = {}
    if review is not None:
        chosen = {s.id: review.state.voice_of(s) for s in review.state.segments}
    own_f0 = {v.id: v.median_f0 for v in cast.voices}
    shifts = []
    for segment in segments:
        automatic = cast.semitones(segment.speaker)
        voice_id = chosen.get(segment.id)
        voice = parse(voice_id) if voice_id else None
        if voice is None or voice.variant is None or voice.model not in own_f0:
            shifts.append(automatic)
        else:
            shifts.append(variant_shift(voice.variant, own_f0[voice.model]))
    return shifts
