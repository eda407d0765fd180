"""The voices a speaker can be given, shared by the API (list, validate) and the worker (render).

MMS-TTS has one speaker per language, so each served ``mms_tts_<lang>`` model is offered as its
own voice (the automatic cast: each speaker's pitch moved toward their own, see
``polydub.orchestrator.voices``) plus named variants: the same voice rendered at a fixed median
F0, two in the gender stage's male range and two in its female range. A variant is a
formant-preserving pitch shift of the model's speech, from the voice's measured F0 to the
variant's, so choosing one for a speaker moves that speaker's segments and nothing else.
Ids are ``<model>:<variant>``, e.g. ``mms_tts_spa:female_high``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# A variant's shift is bounded by what the stretch engine applies formant-preserving.
from polydub.media.stretch import MAX_SEMITONES

SEPARATOR = ":"


@dataclass(frozen=True)
class Variant:
    name: str
    gender: Literal["male", "female"]
    f0: float  # Hz: the median F0 the voice is rendered at


# Inside the gender stage's ranges (male 85-165 Hz, female 155-275 Hz), at least 2.8 semitones
# apart so any two are told apart by ear, and all within the 12 semitones the stretch engine
# shifts from a voice between 100 and 220 Hz (where MMS voices are), so none collapses into a
# neighbour by being clamped.
VARIANTS = (
    Variant("male_low", "male", 110.0),
    Variant("male_high", "male", 138.0),
    Variant("female_low", "female", 170.0),
    Variant("female_high", "female", 200.0),
)
_BY_NAME = {v.name: v for v in VARIANTS}


@dataclass(frozen=True)
class CatalogVoice:
    id: str
    model: str  # the TTS model that speaks it
    variant: Variant | None  # None: the model's own voice, shifted per speaker by the cast


def voices_of(model: str) -> list[CatalogVoice]:
    """The model's own voice first, then its variants."""
    own = CatalogVoice(model, model, None)
    return [own, *(CatalogVoice(f"{model}{SEPARATOR}{v.name}", model, v) for v in VARIANTS)]


def voice_ids(models: list[str] | set[str] | tuple[str, ...]) -> set[str]:
    """Every voice id of these models (a variant id given as a model counts as its model)."""
    return {v.id for m in models for v in voices_of(parse(m).model)}


def parse(voice_id: str) -> CatalogVoice:
    """The voice an id names; an unknown variant name is kept as the bare model (the API
    validates ids against ``voice_ids`` before anything renders them)."""
    model, _, name = voice_id.partition(SEPARATOR)
    variant = _BY_NAME.get(name)
    return CatalogVoice(voice_id if variant else model, model, variant)


def variant_shift(variant: Variant, voice_f0: float) -> float:
    """Semitones from the voice's own median F0 to the variant's, within what the stretch
    engine applies."""
    shift = 12.0 * math.log2(variant.f0 / voice_f0)
    return round(max(-MAX_SEMITONES, min(MAX_SEMITONES, shift)), 2)
