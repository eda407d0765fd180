"""Review and re-dub: a language's segments (read, edit with If-Match), its render, the versions
of its outputs, and the voices a language can be dubbed with."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from polydub.api.deps import Caller, State
from polydub.api.review_service import ReviewService
from polydub.api.routes.languages import served_languages
from polydub.languages import resolve
from polydub.review import RenderOut, SegmentsOut, SegmentsPatch, VoiceOut, VoicesOut
from polydub.schemas import ErrorEnvelope, OutputFile
from polydub.voice_catalog import voices_of

router = APIRouter(tags=["review"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorEnvelope} for c in (401, 404, 409, 422, 429)
}
_SEGMENTS = "/jobs/{job_id}/languages/{language}/segments"


@router.get(
    _SEGMENTS,
    response_model=SegmentsOut,
    responses=_ERRORS,
    summary="A language's segments: speaker, times, source text, translation, voice, fit",
)
async def get_segments(
    job_id: uuid.UUID, language: str, state: State, key: Caller, response: Response
) -> SegmentsOut:
    out = await ReviewService(state).segments(key, job_id, language)
    response.headers["ETag"] = out.etag
    return out


@router.patch(
    _SEGMENTS,
    response_model=SegmentsOut,
    responses={**_ERRORS, 412: {"model": ErrorEnvelope}, 428: {"model": ErrorEnvelope}},
    summary="Edit segments (If-Match: the ETag read); a render makes the edits heard",
)
async def patch_segments(
    job_id: uuid.UUID,
    language: str,
    patch: SegmentsPatch,
    state: State,
    key: Caller,
    response: Response,
    if_match: Annotated[str | None, Header()] = None,
) -> SegmentsOut:
    out = await ReviewService(state).edit(key, job_id, language, patch, if_match)
    response.headers["ETag"] = out.etag
    return out


@router.post(
    "/jobs/{job_id}/languages/{language}/render",
    status_code=202,
    response_model=RenderOut,
    responses={**_ERRORS, 412: {"model": ErrorEnvelope}},
    summary="Render the edited segments again: a new version of the language's outputs",
)
async def render(
    job_id: uuid.UUID,
    language: str,
    state: State,
    key: Caller,
    if_match: Annotated[str | None, Header()] = None,
) -> RenderOut:
    version, status = await ReviewService(state).render(key, job_id, language, if_match)
    return RenderOut(job_id=str(job_id), language=language, version=version, status=status)


@router.get(
    "/jobs/{job_id}/languages/{language}/versions/{version}",
    response_model=list[OutputFile],
    responses=_ERRORS,
    summary="The files of an earlier version of a language's outputs",
)
async def version_files(
    job_id: uuid.UUID, language: str, version: int, state: State, key: Caller
) -> list[OutputFile]:
    return await ReviewService(state).version_files(key, job_id, language, version)


@router.get(
    "/voices",
    response_model=VoicesOut,
    responses={c: {"model": ErrorEnvelope} for c in (401, 429, 503)},
    summary="The voices of the speech models being served, optionally of one language",
)
async def voices(
    state: State,
    key: Caller,
    language: Annotated[str | None, Query(min_length=2, max_length=35)] = None,
) -> VoicesOut:
    served = await served_languages(state)
    found = [
        VoiceOut(
            id=voice.id,
            language=model.rsplit("_", 1)[-1],
            model=model,
            gender=voice.variant.gender if voice.variant else None,
            f0=voice.variant.f0 if voice.variant else None,
        )
        for model in served.models
        if model.startswith("mms_tts_")
        for voice in voices_of(model)  # the model's own voice, then its pitch variants
    ]
    if language is not None:  # a tag as people write it (es, es-ES, spa)
        resolved = resolve(language)
        code = resolved.code if resolved else language
        found = [v for v in found if v.language == code]
    return VoicesOut(voices=found)
