"""The job's original audio, for playback beside the dub (the web page's "original" player and
its per-segment play buttons) from any browser, not only the one that uploaded the file."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel

from polydub.api.db import jobs as jobs_db
from polydub.api.deps import Caller, State
from polydub.api.routes.downloads import download_link
from polydub.errors import NotFound
from polydub.schemas import ErrorEnvelope

router = APIRouter(tags=["outputs"])


class OriginalOut(BaseModel):
    url: str  # a short-lived link, as the outputs' (no Authorization header needed)
    filename: str
    expires_in_seconds: int


@router.get(
    "/jobs/{job_id}/original",
    status_code=302,
    response_model=None,  # a redirect, or the link as JSON (OriginalOut)
    responses={
        200: {"model": OriginalOut, "description": "with redirect=false: the link as JSON"},
        302: {"description": "to the original audio's download link"},
        **{c: {"model": ErrorEnvelope} for c in (401, 404, 429)},
    },
    summary="The job's original audio: a redirect to a short-lived link (JSON: redirect=false)",
)
async def original(
    job_id: uuid.UUID,
    state: State,
    key: Caller,
    redirect: Annotated[
        bool, Query(description="false: answer the link as JSON (a page sets it as a src)")
    ] = True,
) -> RedirectResponse | JSONResponse:
    job = await jobs_db.get_job(state.pool, key.id, job_id)
    # The job's audio as extract_audio decoded it (48 kHz WAV): on the segments' timeline, and
    # under the job's own prefix, where signed links may point (never at the input itself).
    audio = await jobs_db.original_audio(state.pool, job_id)
    if not audio or not await state.store.exists(audio):  # not decoded yet, or expired
        raise NotFound(
            f"job {job_id} has no original audio yet (status {job['status']})",
            code="original_not_found",
        )
    filename = f"{(job['input_filename'] or 'original').rsplit('.', 1)[0]}.original.wav"
    link = download_link(state, job_id, audio, filename)
    if redirect:
        return RedirectResponse(link, 302)
    out = OriginalOut(
        url=link,
        filename=filename,
        expires_in_seconds=state.settings.presign_ttl_seconds,
    )
    return JSONResponse(out.model_dump())
