"""Small real media made on the fly with ffmpeg and espeak-ng, for tests of every tier.

The generators live in ``polydub.samples`` (``polydub sample make`` uses them too); this module
keeps the names the tests import.
"""

from polydub.samples import (
    DEFAULT_TURNS,
    FEMALE_VOICE,
    MALE_VOICE,
    Clip,
    Turn,
    background,
    espeak,
    make_audio,
    make_sample,
    make_two_speaker_clip,
    make_video,
    resample,
    tone,
)

__all__ = [
    "DEFAULT_TURNS",
    "FEMALE_VOICE",
    "MALE_VOICE",
    "Clip",
    "Turn",
    "background",
    "espeak",
    "make_audio",
    "make_sample",
    "make_two_speaker_clip",
    "make_video",
    "resample",
    "tone",
]
