"""Language codes across the models: one canonical code (ISO 639-3, as MMS-TTS uses), mapped to
Whisper's ISO 639-1 codes and NLLB-200's FLORES-200 codes.

Only languages that all three model families cover are listed; what a deployment really serves
also depends on which MMS-TTS voices its model repository holds (``GET /languages`` reads that).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import langcodes

from polydub.errors import InvalidInput


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-3, canonical in the API, the database and object keys
    name: str
    whisper: str  # Whisper's language token, <|xx|>
    nllb: str  # NLLB-200 / FLORES-200 code


_TABLE = [
    Language("eng", "English", "en", "eng_Latn"),
    Language("spa", "Spanish", "es", "spa_Latn"),
    Language("fra", "French", "fr", "fra_Latn"),
    Language("deu", "German", "de", "deu_Latn"),
    Language("ita", "Italian", "it", "ita_Latn"),
    Language("por", "Portuguese", "pt", "por_Latn"),
    Language("nld", "Dutch", "nl", "nld_Latn"),
    Language("pol", "Polish", "pl", "pol_Latn"),
    Language("ron", "Romanian", "ro", "ron_Latn"),
    Language("swe", "Swedish", "sv", "swe_Latn"),
    Language("fin", "Finnish", "fi", "fin_Latn"),
    Language("hun", "Hungarian", "hu", "hun_Latn"),
    Language("ces", "Czech", "cs", "ces_Latn"),
    Language("tur", "Turkish", "tr", "tur_Latn"),
    Language("rus", "Russian", "ru", "rus_Cyrl"),
    Language("ukr", "Ukrainian", "uk", "ukr_Cyrl"),
    Language("ell", "Greek", "el", "ell_Grek"),
    Language("heb", "Hebrew", "he", "heb_Hebr"),
    Language("hin", "Hindi", "hi", "hin_Deva"),
    Language("ben", "Bengali", "bn", "ben_Beng"),
    Language("tam", "Tamil", "ta", "tam_Taml"),
    Language("vie", "Vietnamese", "vi", "vie_Latn"),
    Language("tha", "Thai", "th", "tha_Thai"),
    Language("ind", "Indonesian", "id", "ind_Latn"),
    Language("swh", "Swahili", "sw", "swh_Latn"),
    Language("kor", "Korean", "ko", "kor_Hang"),
    Language("yor", "Yoruba", "yo", "yor_Latn"),
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}
_BY_WHISPER = {lang.whisper: lang for lang in _TABLE}


def resolve(tag: str) -> Language | None:
    """The language a tag names as people write it: ISO 639-3 (``spa``), ISO 639-1 (``es``),
    ISO 639-2/B (``ger``) or BCP-47 (``es-ES``, ``es_ES``, ``spa_Latn``), in any case; None if
    it names none polydub has. Parsing is langcodes' (CLDR's aliases: ``iw`` is Hebrew)."""
    text = tag.strip().lower()
    if text in LANGUAGES:
        return LANGUAGES[text]
    try:
        parsed = langcodes.Language.get(langcodes.standardize_tag(text))
    except (ValueError, LookupError):
        return None
    subtag = parsed.language or ""
    # A two-letter subtag goes through Whisper's ISO 639-1 codes, not langcodes' alpha-3: "sw"
    # is the macrolanguage "swa" there, while MMS-TTS and NLLB speak individual "swh".
    if len(subtag) == 2:
        return _BY_WHISPER.get(subtag)
    return LANGUAGES.get(subtag)


def suggest(tag: str) -> str | None:
    """The supported code closest to a tag that resolves to none (a typo, or a name)."""
    text = tag.strip().lower()
    names = {lang.name.lower(): lang.code for lang in _TABLE}
    match = difflib.get_close_matches(text, [*LANGUAGES, *names], n=1, cutoff=0.6)
    if not match:
        return None
    return names.get(match[0], match[0])


def unsupported_message(tag: str) -> str:
    """``unsupported language 'xx'``, with the closest supported code when one is close."""
    hint = suggest(tag)
    message = f"unsupported language {tag.strip()!r}"
    if hint is not None:
        message += f" (did you mean {hint!r}, {LANGUAGES[hint].name}?)"
    return message + f"; supported: {', '.join(sorted(LANGUAGES))}"


def get_language(code: str) -> Language:
    """Look up a code as people write it; an unknown one is a clear error listing the supported
    codes and, when one is close, the one meant."""
    language = resolve(code)
    if language is None:
        raise InvalidInput(
            unsupported_message(code),
            code="unsupported_language",
            detail={"supported": sorted(LANGUAGES)},
        )
    return language


def check_served(targets: Sequence[str], served: Collection[str]) -> None:
    """Refuse target languages (canonical codes) the models being served cannot produce: 422
    ``language_not_served`` naming them and the served ones, before any work is done on them."""
    missing = [code for code in targets if code not in served]
    if not missing:
        return
    names = ", ".join(
        f"{code} ({LANGUAGES[code].name})" if code in LANGUAGES else code for code in missing
    )
    listed = ", ".join(sorted(served)) or "none"
    raise InvalidInput(
        f"cannot dub into {names} with the models being served; served: {listed}",
        code="language_not_served",
        detail={"languages": missing, "served": sorted(served)},
    )


def from_whisper(code: str) -> Language | None:
    return _BY_WHISPER.get(code)
