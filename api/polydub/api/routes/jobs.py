"""Jobs: submit (streamed multipart upload, or JSON after a presigned upload), list, read,
cancel, retry, purge; and presigned upload reservations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from polydub.api import multipart
from polydub.api.deps import AppState, Caller, State
from polydub.api.errors import PayloadTooLarge
from polydub.api.jobs_db import (
    NewJob,
    cancel_job,
    find_by_idempotency_key,
    get_job,
    insert_job,
    job_json,
    list_jobs,
    retry_job,
)
from polydub.api.media_probe import SNIFF_BYTES, probe, sniff
from polydub.api.ratelimit import active_jobs, quota_error
from polydub.api.retention import purge_job
from polydub.api.schemas import (
    ErrorEnvelope,
    JobFromUpload,
    JobListQuery,
    JobOptions,
    JobOut,
    JobPage,
    PurgeOut,
    UploadOut,
)
from polydub.api.webhooks import check_callback_url
from polydub.clients.queue import progress_subject
from polydub.errors import Conflict, InvalidInput, NotFound
from polydub.telemetry.metrics import job_transition
from polydub.telemetry.tracing import span

log = logging.getLogger("polydub.api.jobs")
router = APIRouter(tags=["jobs"])

MAX_JSON_BODY = 64 * 1024
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="A repeat with the same key returns the job the first request created",
    ),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}

_FORM_SCHEMA = {
    "type": "object",
    "required": ["file", "target_languages"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the video or audio"},
        "source_language": {"type": "string", "default": "auto"},
        "target_languages": {
            "type": "array",
            "items": {"type": "string"},
            "description": "repeat the field, or separate codes with commas",
        },
        "num_speakers": {"type": "integer", "minimum": 1, "maximum": 20},
        "keep_background": {"type": "boolean", "default": True},
        "subtitles_only": {"type": "boolean", "default": False},
        "start_time": {"type": "number", "minimum": 0},
        "end_time": {"type": "number", "exclusiveMinimum": 0},
        "callback_url": {"type": "string", "format": "uri"},
    },
}
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _FORM_SCHEMA},
            "application/json": {"schema": JobFromUpload.model_json_schema()},
        },
    }
}


def _job_out(row: Any, state: AppState) -> JobOut:
    return JobOut.model_validate(job_json(row, state.settings))


def _accepted(response: Response, job: JobOut, *, replayed: bool) -> JobOut:
    response.status_code = 202
    response.headers["Location"] = job.links.self
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return job


def _check_targets(options: JobOptions, limit: int) -> None:
    if len(options.target_languages) > limit:
        raise InvalidInput(
            f"at most {limit} target languages per job", code="too_many_target_languages"
        )


def _check_range(options: JobOptions, duration: float) -> None:
    if options.start_time is not None and options.start_time >= duration:
        raise InvalidInput(
            f"start_time {options.start_time:g} s is past the end of the media ({duration:g} s)",
            code="invalid_time_range",
        )


def _options_from_form(fields: dict[str, list[str]]) -> JobOptions:
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, values in fields.items():
        if name == "target_languages":
            data[name] = values
        elif len(values) > 1:
            errors.append(
                {"type": "multiple_values", "loc": ("body", name), "msg": "sent more than once"}
            )
        else:
            data[name] = values[0]
    if errors:
        raise RequestValidationError(errors)
    options: JobOptions = _validate(JobOptions, data)
    return options


def _validate(model: type[JobOptions], data: Any) -> Any:
    try:
        if isinstance(data, (bytes, str)):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


async def _notify(
    state: AppState, job_id: uuid.UUID, event_id: int | None, data: dict[str, Any]
) -> None:
    """Wake SSE/WebSocket followers in every replica; the row is already committed."""
    nc = await state.nats.get()
    if event_id is None or nc is None or not nc.is_connected:
        return
    with contextlib.suppress(Exception):
        message = {"id": event_id, "type": "state", **data}
        await nc.publish(
            progress_subject(state.settings, str(job_id)), json.dumps(message).encode()
        )


async def _drop_input(state: AppState, job_id: uuid.UUID) -> None:
    with contextlib.suppress(Exception):
        await state.store.delete_prefix(f"inputs/{job_id}/")


async def _accept(
    state: AppState,
    key: Any,
    response: Response,
    *,
    job_id: uuid.UUID,
    options: JobOptions,
    input_key: str,
    filename: str | None,
    size: int,
    media: dict[str, Any],
    idempotency_key: str | None,
) -> JobOut:
    # The job's trace starts here: insert_job writes this span's context into the outbox row,
    # and the worker's spans continue it from the NATS message headers.
    attributes = {
        "polydub.job_id": str(job_id),
        "polydub.target_languages": list(options.target_languages),
        "polydub.source_language": options.source_language,
        "polydub.input_bytes": size,
    }
    try:
        with span("job.submit", attributes=attributes) as current:
            row, created, event_id = await insert_job(
                state.pool,
                NewJob(
                    id=job_id,
                    owner_id=key.id,
                    options=options,
                    input_key=input_key,
                    input_filename=filename,
                    input_bytes=size,
                    media=media,
                    idempotency_key=idempotency_key,
                    quota=key.max_concurrent_jobs,
                ),
                state.settings,
            )
            current.set_attribute("polydub.replayed", not created)
    except BaseException:
        await _drop_input(state, job_id)  # nothing stored for a job that was not created
        raise
    if not created:
        await _drop_input(state, job_id)
        return _accepted(response, _job_out(row, state), replayed=True)
    job_transition("queued")
    state.relay.wake()
    await _notify(state, job_id, event_id, {"status": "queued"})
    log.info("job accepted", extra={"job_id": str(job_id), "bytes": size})
    return _accepted(response, _job_out(row, state), replayed=False)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses=_ERRORS,
    openapi_extra=_CREATE_BODY,
    summary="Submit a job: multipart upload, or JSON naming a presigned upload",
)
async def create_job(
    request: Request,
    response: Response,
    state: State,
    key: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    settings = state.settings
    if idempotency_key:
        existing = await find_by_idempotency_key(state.pool, key.id, idempotency_key)
        if existing is not None:  # answered without reading the body
            return _accepted(response, _job_out(existing, state), replayed=True)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "application/json":
        return await _create_from_upload(request, response, state, key, idempotency_key)

    multipart.check_content_length(request.headers.get("content-length"), settings.media_max_bytes)
    boundary = multipart.boundary_of(content_type)
    if await active_jobs(state.pool, key.id) >= key.max_concurrent_jobs:
        raise quota_error(key.max_concurrent_jobs)  # before reading a large body for nothing
    spool = Path(tempfile.mkdtemp(prefix="polydub-upload-", dir=settings.api_tmp_dir))
    try:
        upload = await multipart.receive(
            request.stream(), boundary, spool, settings.media_max_bytes
        )
        options = _options_from_form(upload.fields)
        _check_targets(options, settings.api_max_target_languages)
        if options.callback_url:
            check_callback_url(str(options.callback_url), settings)
        assert upload.path is not None and upload.container is not None
        media = await probe(upload.path, upload.container, settings)
        _check_range(options, media.duration_seconds)
        job_id = uuid.uuid4()
        input_key = f"inputs/{job_id}/source"
        await state.store.put_file(
            input_key,
            upload.path,
            content_type=media.content_type,
            metadata={"filename": upload.filename or ""},
        )
        return await _accept(
            state,
            key,
            response,
            job_id=job_id,
            options=options,
            input_key=input_key,
            filename=upload.filename,
            size=upload.size,
            media=media.to_json(),
            idempotency_key=idempotency_key,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, spool, True)


async def _read_json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLarge("the JSON body is too large", code="payload_too_large")
    return bytes(body)


async def _create_from_upload(
    request: Request, response: Response, state: AppState, key: Any, idempotency_key: str | None
) -> JobOut:
    settings = state.settings
    multipart.check_content_length(request.headers.get("content-length"), MAX_JSON_BODY)
    body = await _read_json_body(request)
    request_model: JobFromUpload = _validate(JobFromUpload, body)
    _check_targets(request_model, settings.api_max_target_languages)
    if request_model.callback_url:
        check_callback_url(str(request_model.callback_url), settings)
    upload = await state.pool.fetchrow(
        "SELECT id, object_key, filename FROM uploads"
        " WHERE id = $1 AND owner_id = $2 AND expires_at > now()",
        request_model.upload_id,
        key.id,
    )
    if upload is None:
        raise NotFound(f"upload {request_model.upload_id} not found", code="upload_not_found")
    if await active_jobs(state.pool, key.id) >= key.max_concurrent_jobs:
        raise quota_error(key.max_concurrent_jobs)
    job_id: uuid.UUID = upload["id"]
    object_key: str = upload["object_key"]
    if not await state.store.exists(object_key):
        raise Conflict("nothing was uploaded to the upload URL yet", code="upload_missing")

    async def reject() -> None:
        await _drop_input(state, job_id)
        await state.pool.execute("DELETE FROM uploads WHERE id = $1", job_id)

    stored = await state.store.stat(object_key)
    if stored.size > settings.media_max_bytes:
        await reject()
        raise multipart._too_large(settings.media_max_bytes)
    spool = Path(tempfile.mkdtemp(prefix="polydub-upload-", dir=settings.api_tmp_dir))
    try:
        local = await state.store.download(object_key, spool / "source")
        try:
            with local.open("rb") as f:
                container = sniff(f.read(SNIFF_BYTES))
            media = await probe(local, container, settings)
            _check_range(request_model, media.duration_seconds)
        except InvalidInput:
            await reject()
            raise
        options = JobOptions.model_validate(request_model.model_dump(exclude={"upload_id"}))
        job = await _accept(
            state,
            key,
            response,
            job_id=job_id,
            options=options,
            input_key=object_key,
            filename=upload["filename"],
            size=stored.size,
            media=media.to_json(),
            idempotency_key=idempotency_key,
        )
        await state.pool.execute("DELETE FROM uploads WHERE id = $1", job_id)
        return job
    finally:
        await asyncio.to_thread(shutil.rmtree, spool, True)


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    responses=_ERRORS,
    summary="Reserve a presigned upload for a large file; then POST /jobs with its upload_id",
)
async def create_upload(
    state: State,
    key: Caller,
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> UploadOut:
    name = multipart.validate_filename(filename.encode()) if filename else None
    upload_id = uuid.uuid4()
    object_key = f"inputs/{upload_id}/source"
    ttl = timedelta(seconds=state.settings.api_upload_ttl_seconds)
    expires_at = await state.pool.fetchval(
        "INSERT INTO uploads (id, owner_id, object_key, filename, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + $5::interval) RETURNING expires_at",
        upload_id,
        key.id,
        object_key,
        name,
        ttl,
    )
    return UploadOut(
        upload_id=upload_id,
        url=state.store.presigned_put(object_key, ttl=ttl),
        method="PUT",
        expires_at=expires_at,
        max_bytes=state.settings.media_max_bytes,
    )


@router.get("/jobs", response_model=JobPage, responses=_ERRORS, summary="List your jobs")
async def list_my_jobs(
    state: State, key: Caller, query: Annotated[JobListQuery, Query()]
) -> JobPage:
    rows, next_cursor = await list_jobs(
        state.pool, key.id, status=query.status, limit=query.limit, cursor=query.cursor
    )
    return JobPage(items=[_job_out(r, state) for r in rows], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_ERRORS, summary="A job's state")
async def read_job(job_id: uuid.UUID, state: State, key: Caller) -> JobOut:
    return _job_out(await get_job(state.pool, key.id, job_id), state)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    status_code=202,
    responses=_ERRORS,
    summary="Cancel: at once if queued, at the next stage boundary if running",
)
async def cancel(job_id: uuid.UUID, state: State, key: Caller) -> JobOut:
    row, event_id = await cancel_job(state.pool, key.id, job_id)
    if event_id is not None:  # it was queued: cancelled here, no worker will see it
        job_transition("cancelled")
    await _notify(state, job_id, event_id, {"status": "cancelled"})
    return _job_out(row, state)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobOut,
    status_code=202,
    responses=_ERRORS,
    summary="Re-queue a failed or cancelled job; finished languages are kept",
)
async def retry(job_id: uuid.UUID, state: State, key: Caller) -> JobOut:
    with span("job.retry", attributes={"polydub.job_id": str(job_id)}):
        row, event_id = await retry_job(
            state.pool, key.id, job_id, state.settings, key.max_concurrent_jobs
        )
    job_transition("queued")
    state.relay.wake()
    await _notify(state, job_id, event_id, {"status": "queued", "retry": row["retries"]})
    return _job_out(row, state)


@router.delete(
    "/jobs/{job_id}/data",
    response_model=PurgeOut,
    responses=_ERRORS,
    summary="Purge a finished job: its input, outputs and records are deleted",
)
async def purge(job_id: uuid.UUID, state: State, key: Caller) -> PurgeOut:
    status = await state.pool.fetchval(
        "SELECT status FROM jobs WHERE id = $1 AND owner_id = $2", job_id, key.id
    )
    if status is None:
        from polydub.api.errors import job_not_found

        raise job_not_found(job_id)
    if status in {"queued", "running"}:
        raise Conflict("cancel the job before purging it", code="job_active")
    deleted = await purge_job(state.pool, state.store, job_id)
    return PurgeOut(job_id=job_id, deleted_objects=deleted)
