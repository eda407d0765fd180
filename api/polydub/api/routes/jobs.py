"""Jobs over HTTP: submit (a streamed multipart upload, or JSON after a presigned upload), list,
read, cancel, retry, purge; and presigned upload reservations. Each route parses the request,
calls the job service (polydub.api.jobs_service) and maps its answer to the response."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from polydub.api import multipart
from polydub.api.deps import Caller, Jobs, State
from polydub.api.errors import PayloadTooLarge
from polydub.api.idempotency import file_sha256, request_hash, upload_request_hashes
from polydub.api.jobs_service import Accepted
from polydub.schemas import (
    MAX_TIME_SECONDS,
    ErrorEnvelope,
    JobFromUpload,
    JobFromUrl,
    JobListQuery,
    JobOptions,
    JobOut,
    JobPage,
    PurgeOut,
    UploadOut,
)

router = APIRouter(tags=["jobs"])

MAX_JSON_BODY = 64 * 1024
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="A repeat with the same key and request returns the job the first request"
        " created; with another request, 422 idempotency_mismatch",
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
            "description": "repeat the field, or separate codes with commas; ISO 639-1, 639-3"
            " or BCP-47 tags (es, spa, es-ES), answered as ISO 639-3",
        },
        "num_speakers": {"type": "integer", "minimum": 1, "maximum": 20},
        "keep_background": {"type": "boolean", "default": True},
        "background": {"type": "string", "enum": ["keep", "separate", "drop"]},
        "subtitles_only": {"type": "boolean", "default": False},
        "review": {
            "type": "boolean",
            "default": False,
            "description": "stop each language after translation until a render approves it",
        },
        "start_time": {"type": "number", "minimum": 0, "maximum": MAX_TIME_SECONDS},
        "end_time": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIME_SECONDS},
        "callback_url": {"type": "string", "format": "uri"},
        "name": {"type": "string", "maxLength": 200},
        "metadata": {
            "type": "string",
            "description": "a JSON object, at most 16 KiB as compact JSON; echoed back",
        },
    },
}
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _FORM_SCHEMA},
            "application/json": {
                "schema": {
                    "oneOf": [JobFromUpload.model_json_schema(), JobFromUrl.model_json_schema()]
                }
            },
        },
    }
}


def _accepted(response: Response, accepted: Accepted) -> JobOut:
    response.status_code = 202
    response.headers["Location"] = accepted.job.links.self
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted.job


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


def _names_source_url(raw: bytes) -> bool:
    """Whether a JSON submission is a source_url one (else it names an upload_id)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return False  # the upload model's parse reports it
    return isinstance(data, dict) and "source_url" in data


async def _read_json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise PayloadTooLarge("the JSON body is too large", code="payload_too_large")
    return bytes(body)


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses=_ERRORS,
    openapi_extra=_CREATE_BODY,
    summary="Submit a job: multipart upload, or JSON naming a presigned upload or a source_url",
)
async def create_job(
    request: Request,
    response: Response,
    state: State,
    jobs: Jobs,
    key: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    # A repeat of an Idempotency-Key is answered from its first job only after its body is read:
    # a different request under the same key is a 422 idempotency_mismatch (api/idempotency.py).
    content_type = request.headers.get("content-type", "")
    length = request.headers.get("content-length")
    if content_type.split(";")[0].strip().lower() == "application/json":
        multipart.check_content_length(length, MAX_JSON_BODY)
        raw = await _read_json_body(request)
        if _names_source_url(raw):
            from_url: JobFromUrl = _validate(JobFromUrl, raw)
            jobs.request_hash = request_hash(from_url)
            replayed = await jobs.replay(key, idempotency_key)
            if replayed is not None:
                return _accepted(response, replayed)
            return _accepted(response, await jobs.submit_from_url(key, from_url, idempotency_key))
        body: JobFromUpload = _validate(JobFromUpload, raw)
        if idempotency_key:  # the upload's content is part of the request (api/idempotency.py)
            jobs.request_hash, jobs.also_accepted = await upload_request_hashes(
                state.pool, state.store, key.id, body, idempotency_key
            )
        replayed = await jobs.replay(key, idempotency_key)
        if replayed is not None:
            return _accepted(response, replayed)
        return _accepted(response, await jobs.submit_uploaded(key, body, idempotency_key))

    max_bytes = state.settings.media_max_bytes
    multipart.check_content_length(length, max_bytes)
    boundary = multipart.boundary_of(content_type)
    await jobs.check_quota(key, idempotency_key)  # before reading a large body for nothing
    async with jobs.spool() as spool:
        upload = await multipart.receive(request.stream(), boundary, spool, max_bytes)
        options = _options_from_form(upload.fields)
        if idempotency_key and upload.path is not None:
            digest = await asyncio.to_thread(file_sha256, upload.path)
            jobs.request_hash = request_hash(options, file_sha256=digest)
        replayed = await jobs.replay(key, idempotency_key)
        if replayed is not None:
            return _accepted(response, replayed)
        accepted = await jobs.submit_file(key, upload, options, idempotency_key)
    return _accepted(response, accepted)


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    responses=_ERRORS,
    summary="Reserve a presigned upload for a large file; then POST /jobs with its upload_id",
)
async def create_upload(
    jobs: Jobs,
    key: Caller,
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> UploadOut:
    name = multipart.validate_filename(filename.encode()) if filename else None
    return await jobs.reserve_upload(key, name)


@router.get("/jobs", response_model=JobPage, responses=_ERRORS, summary="List your jobs")
async def list_my_jobs(jobs: Jobs, key: Caller, query: Annotated[JobListQuery, Query()]) -> JobPage:
    return await jobs.list_jobs(key, query)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_ERRORS, summary="A job's state")
async def read_job(job_id: uuid.UUID, jobs: Jobs, key: Caller) -> JobOut:
    return await jobs.get(key, job_id)


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    status_code=202,
    responses=_ERRORS,
    summary="Cancel: at once if queued, at the next stage boundary if running",
)
async def cancel(job_id: uuid.UUID, jobs: Jobs, key: Caller) -> JobOut:
    return await jobs.cancel(key, job_id)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobOut,
    status_code=202,
    responses=_ERRORS,
    summary="Re-queue a failed or cancelled job; finished languages are kept",
)
async def retry(job_id: uuid.UUID, jobs: Jobs, key: Caller) -> JobOut:
    return await jobs.retry(key, job_id)


@router.delete(
    "/jobs/{job_id}/data",
    response_model=PurgeOut,
    responses=_ERRORS,
    summary="Purge a finished job: its input, outputs and records are deleted",
)
async def purge(job_id: uuid.UUID, jobs: Jobs, key: Caller) -> PurgeOut:
    return await jobs.purge(key, job_id)
