"""Language codes across the models: one canonical code (ISO 639-3, as MMS-TTS uses), mapped to
Whisper's ISO 639-1 codes and NLLB-200's FLORES-200 codes.

Only languages that all three model families cover are listed; what a deployment really serves
also depends on which MMS-TTS voices its model repository holds (``GET /languages`` reads that).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def get_language(code: str) -> Language:
    """Look up a canonical code; an unknown one is a clear error listing the supported codes."""
    try:
        return LANGUAGES[code]
    except KeyError:
        raise InvalidInput(
            f"unsupported language {code!r}; supported: {', '.join(sorted(LANGUAGES))}",
            code="unsupported_language",
            detail={"supported": sorted(LANGUAGES)},
        ) from None


def from_whisper(code: str) -> Language | None:
    return _BY_WHISPER.get(code)
