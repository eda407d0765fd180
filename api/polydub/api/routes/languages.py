"""What each stage supports, read from the model repository that Triton serves.

Speech recognition (a ``whisper*`` model) and translation (an ``nllb*`` model) cover every
language of ``polydub.languages``; speech synthesis is one MMS-TTS model per language, named
``mms_tts_<iso639-3>``, so a language is a full dub target only if its voice is in the repository.
The index is cached briefly: it changes when models are added, not per request.
"""

from __future__ import annotations

import re
import time

from fastapi import APIRouter

from polydub.api.deps import AppState, Caller, State
from polydub.errors import ServiceUnavailable
from polydub.languages import LANGUAGES
from polydub.manifest import MANIFEST_MODEL, Manifest, fetch_manifest
from polydub.schemas import ErrorEnvelope, LanguageOut, LanguagesOut, ServedModelOut

router = APIRouter(tags=["languages"])

CACHE_SECONDS = 30.0
_TTS = re.compile(r"^mms[_-]tts[_-]([a-z]{3})$")


def supported(models: list[str], manifest: Manifest | None = None) -> LanguagesOut:
    asr = any(m.startswith("whisper") for m in models)
    mt = any(m.startswith("nllb") for m in models)
    voices = {match[1] for m in models if (match := _TTS.match(m))}
    languages = [
        LanguageOut(
            code=lang.code,
            name=lang.name,
            transcribe=asr,
            translate=mt,
            synthesize=lang.code in voices,
            dub_target=mt and lang.code in voices,
        )
        for lang in sorted(LANGUAGES.values(), key=lambda lang: lang.code)
    ]
    served = [
        ServedModelOut(name=name, **facts)
        for name, facts in (manifest or Manifest()).summary(models)["models"].items()
    ]
    return LanguagesOut(
        auto_detect=asr,
        models=sorted(m for m in models if m != MANIFEST_MODEL),
        served=served,
        random_weights=sorted({s.family for s in served if s.random_weights}),
        languages=languages,
    )


@router.get(
    "/languages",
    response_model=LanguagesOut,
    responses={c: {"model": ErrorEnvelope} for c in (401, 429, 503)},
    summary="Languages per stage, from the model repository",
)
async def languages(state: State, key: Caller) -> LanguagesOut:
    return await served_languages(state)


async def served_languages(state: AppState) -> LanguagesOut:
    """What the model server serves now (cached CACHE_SECONDS); 503 when it is unreachable."""
    cached = state.languages_cache
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        result: LanguagesOut = cached[1]
        return result
    try:
        index = await state.triton.repository_index()
    except Exception as exc:
        raise ServiceUnavailable(
            "the model server is not reachable", code="triton_unavailable"
        ) from exc
    ready = [str(m["name"]) for m in index if m.get("name")]
    result = supported(ready, await fetch_manifest(state.triton))
    state.languages_cache = (time.monotonic(), result)
    return result
