"""Outputs: short-lived presigned links to a target language's files, and a preview clip."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse

from polydub.api.db import jobs as jobs_db
from polydub.api.deps import AppState, Caller, State
from polydub.api.errors import job_not_found
from polydub.api.job_view import download_name
from polydub.api.preview import make_preview
from polydub.api.review_service import earlier_versions
from polydub.api.routes.downloads import download_link
from polydub.errors import Conflict, InvalidInput, NotFound
from polydub.jobs import ArtifactKind
from polydub.media.preview import snap
from polydub.schemas import (
    MAX_TIME_SECONDS,
    ErrorEnvelope,
    FiniteFloat,
    OutputFile,
    OutputsOut,
    PreviewOut,
)

router = APIRouter(tags=["outputs"])


@router.get(
    "/jobs/{job_id}/outputs/{language}",
    response_model=OutputsOut,
    responses={c: {"model": ErrorEnvelope} for c in (401, 404, 409, 422, 429)},
    summary="Presigned links to a language's outputs, and optionally a preview clip",
)
async def outputs(
    job_id: uuid.UUID,
    language: str,
    state: State,
    key: Caller,
    preview_start: Annotated[
        FiniteFloat | None,
        Query(
            ge=0, le=MAX_TIME_SECONDS, description="seconds; snapped down to the preview grid (5 s)"
        ),
    ] = None,
    preview_end: Annotated[
        FiniteFloat | None,
        Query(
            gt=0, le=MAX_TIME_SECONDS, description="seconds; snapped up to the preview grid (5 s)"
        ),
    ] = None,
) -> OutputsOut:
    job, chosen = await _chosen(state, key.id, job_id, language)
    files = [
        OutputFile(
            kind=kind,
            url=download_link(
                state,
                job_id,
                row["object_key"],
                download_name(job["input_filename"], language, kind),
            ),
            content_type=row["content_type"],
            size_bytes=row["size_bytes"],
            filename=download_name(job["input_filename"], language, kind),
        )
        for kind, row in sorted(chosen.items())
    ]
    preview = None
    if preview_start is not None or preview_end is not None:
        preview = await _preview(
            state, key.id, job_id, language, chosen, preview_start or 0.0, preview_end
        )
    return OutputsOut(
        job_id=job_id,
        language=language,
        status=job["status"],
        expires_in_seconds=state.settings.presign_ttl_seconds,
        files=files,
        preview=preview,
        version=job["output_version"],
        versions=await earlier_versions(state, job_id, language, job["input_filename"]),
    )


@router.get(
    "/jobs/{job_id}/outputs/{language}/{kind}",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "to the file's download link"},
        **{c: {"model": ErrorEnvelope} for c in (401, 404, 409, 422, 429)},
    },
    summary="One output file: a redirect to its download link (curl -L, a browser)",
)
async def output_file(
    job_id: uuid.UUID, language: str, kind: ArtifactKind, state: State, key: Caller
) -> RedirectResponse:
    job, chosen = await _chosen(state, key.id, job_id, language)
    row = chosen.get(kind)
    if row is None:
        raise NotFound(
            f"the job has no {kind} for {language!r}; it has {', '.join(sorted(chosen))}",
            code="output_not_found",
            detail={"available": sorted(chosen)},
        )
    name = download_name(job["input_filename"], language, kind)
    return RedirectResponse(download_link(state, job_id, row["object_key"], name), 302)


async def _chosen(
    state: AppState, owner: uuid.UUID, job_id: uuid.UUID, language: str
) -> tuple[Any, dict[str, Any]]:
    """The owner's job row for ``language`` and its outputs by kind; 404/409 when there are none."""
    job = await jobs_db.target_of(state.pool, owner, job_id, language)
    if job is None:
        raise job_not_found(job_id)
    if job["status"] is None:
        raise NotFound(f"the job has no target language {language!r}", code="language_not_in_job")
    rows = await jobs_db.artifacts_of(state.pool, job_id, language)
    # A language's own file wins over a job-wide one of the same kind (e.g. source subtitles).
    chosen: dict[str, Any] = {}
    for row in rows:
        chosen.setdefault(row["kind"], row)
    if not chosen:
        raise Conflict(
            f"no outputs for {language!r} yet; the language is {job['status']}",
            code="outputs_not_ready",
            detail={"status": job["status"]},
        )
    return job, chosen


async def _preview(
    state: AppState,
    owner: uuid.UUID,
    job_id: uuid.UUID,
    language: str,
    chosen: dict[str, Any],
    start: float,
    end: float | None,
) -> PreviewOut:
    limit = state.settings.api_preview_max_seconds
    end = start + min(limit, 30.0) if end is None else end
    if end <= start or end - start > limit:
        raise InvalidInput(
            f"the preview range must be 0 < end - start <= {limit:.0f} s",
            code="invalid_preview_range",
        )
    start, end = snap(start, end, state.settings.preview_grid_seconds, limit)
    source, is_video = _preview_source(chosen)
    clip = await make_preview(
        state.store,
        state.settings,
        owner=owner,
        job_id=job_id,
        language=language,
        source_key=source["object_key"],
        is_video=is_video,
        start=start,
        end=end,
    )
    return PreviewOut(
        start=start,
        end=end,
        url=download_link(state, job_id, clip.key),
        content_type=clip.content_type,
        size_bytes=clip.size_bytes,
    )


def _preview_source(chosen: dict[str, Any]) -> tuple[Any, bool]:
    """What a preview is cut from by stream copy into MP4, and whether it is a video: the
    worker's preview rendition, else the dubbed video if it is MP4, else the dubbed audio. A
    dubbed video in another container with no rendition (made before renditions were) has no
    preview: copying it into MP4 fails, and the API never re-encodes."""
    rendition = chosen.get(ArtifactKind.PREVIEW_VIDEO)
    video = chosen.get(ArtifactKind.DUBBED_VIDEO)
    if rendition is not None:
        return rendition, True
    if video is not None and video["content_type"] == "video/mp4":
        return video, True
    if video is not None:
        raise Conflict(
            "this dubbed video has no preview rendition, and its codec cannot be cut into MP4"
            " without re-encoding; download the video instead",
            code="preview_unavailable",
        )
    audio = chosen.get(ArtifactKind.DUBBED_AUDIO)
    if audio is None:
        raise Conflict("no dubbed media to preview yet", code="outputs_not_ready")
    return audio, False
