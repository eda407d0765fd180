"""Downloads through the API: a job's files streamed from S3 behind signed, expiring links.

The outputs route hands out links; which kind depends on the deployment (``download_link``):

- ``s3_public_endpoint`` set: presigned S3 links against that public address (the object store
  serves the bytes, the API none);
- otherwise (the default): ``/api/v1/downloads/<token>`` on the API itself, so a default install
  works from a browser with nothing but the API reachable (the in-cluster S3 name is not).

A token is the link's own authority, like a presigned URL: the browser follows it from an
``<a href>`` or a ``<video src>`` with no API key. It names one object of one job and an expiry,
and is signed with a key derived from the S3 secret that every replica holds. It is only issued
by the owner-checked outputs route, and each use checks again that the job still exists and that
its owner's key is not revoked (revoking a key kills its links at once, which a presigned S3
link cannot do). The body is streamed chunk by chunk (never whole in memory), with Range
requests for seeking in a video and resuming a download.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from polydub.api.db import jobs as jobs_db
from polydub.api.deps import AppState, State
from polydub.api.errors import ApiError, envelope, job_not_found
from polydub.errors import NotFound
from polydub.jobs import JobKeys
from polydub.schemas import ErrorEnvelope
from polydub.settings import Settings

router = APIRouter(tags=["outputs"])

_CONTEXT = b"polydub download links v1"


class Forbidden(ApiError):
    code = "forbidden"
    http_status = 403


@dataclass(frozen=True)
class DownloadLink:
    """What a token names: one object of one job, its download name, until when."""

    job_id: uuid.UUID
    object_key: str
    filename: str
    expires: int  # unix seconds


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def _signing_key(settings: Settings) -> bytes:
    # Derived, not the S3 secret itself: a leaked link signature says nothing about it.
    return hmac.new(settings.s3_secret_key.encode(), _CONTEXT, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(settings: Settings, link: DownloadLink) -> str:
    payload = [str(link.job_id), link.object_key, link.filename, link.expires]
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = hmac.new(_signing_key(settings), body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(settings: Settings, token: str, *, now: float | None = None) -> DownloadLink:
    """The link a token names; Forbidden when it was not signed here or has expired."""
    body, _, mac = token.rpartition(".")
    link: DownloadLink | None = None
    expected = hmac.new(_signing_key(settings), body.encode(), hashlib.sha256).digest()
    try:
        if hmac.compare_digest(expected, _unb64(mac)):
            job, key, filename, expires = json.loads(_unb64(body))
            link = DownloadLink(uuid.UUID(job), str(key), str(filename), int(expires))
    except (ValueError, TypeError, AttributeError):  # not a token of ours
        link = None
    if link is None:
        raise Forbidden("the download link is not valid", code="invalid_download_link")
    if link.expires < (time.time() if now is None else now):
        raise Forbidden(
            "the download link has expired; ask for the outputs again",
            code="download_link_expired",
        )
    return link


def download_link(
    state: AppState, job_id: uuid.UUID, object_key: str, filename: str | None = None
) -> str:
    """The link a client gets for one of a job's objects (see the module docstring)."""
    settings = state.settings
    if settings.s3_public_endpoint:
        return state.store.presigned_get(object_key, filename=filename)
    link = DownloadLink(
        job_id, object_key, filename or "", int(time.time()) + settings.presign_ttl_seconds
    )
    return f"{settings.api_public_url.rstrip('/')}/api/v1/downloads/{sign(settings, link)}"


class _Unsatisfiable(Exception):
    """A Range entirely past the end of the file: answered 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One ``bytes=`` range of RFC 9110, or None for the whole object. A header this server
    may ignore (malformed, several ranges, another unit) means the whole object, as the RFC
    allows; a well-formed range past the end raises ``_Unsatisfiable``."""
    if not header or size == 0:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first:  # the last N bytes
        if int(last) == 0:
            raise _Unsatisfiable
        return ByteRange(max(size - int(last), 0), size - 1)
    if last and not last.isdigit():
        return None
    start = int(first)
    if last and int(last) < start:  # invalid: ignored
        return None
    if start >= size:
        raise _Unsatisfiable
    return ByteRange(start, min(int(last), size - 1) if last else size - 1)


def _disposition(filename: str) -> str:
    if not filename:
        return "inline"
    # The outputs route's names are already ASCII; quote anything else rather than trust it.
    plain = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get(
    "/downloads/{token}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
        206: {"description": "the requested byte range"},
        **{c: {"model": ErrorEnvelope} for c in (403, 404, 416)},
    },
    summary="A file behind a signed link from the outputs route (Range requests supported)",
)
async def download(token: str, request: Request, state: State) -> Response:
    link = verify(state.settings, token)
    if not link.object_key.startswith(JobKeys(link.job_id).prefix):
        raise Forbidden("the download link is not valid", code="invalid_download_link")
    active = await jobs_db.owner_key_active(state.pool, link.job_id)
    if active is None:
        raise job_not_found(link.job_id)
    if not active:
        raise Forbidden("the API key that owns this job was revoked", code="api_key_revoked")
    try:
        info = await state.store.stat(link.object_key)
    except NotFound as exc:
        raise NotFound("the file is gone (expired or purged)", code="file_not_found") from exc

    etag = f'"{info.etag}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": _disposition(link.filename),
        "Cache-Control": f"private, max-age={max(int(link.expires - time.time()), 0)}",
        # Same origin as the web page: never let a downloaded file run as a page here.
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    if_range = request.headers.get("if-range")
    try:
        wanted = (
            None
            if if_range and if_range != etag
            else parse_range(request.headers.get("range"), info.size)
        )
    except _Unsatisfiable:
        body = envelope("range_not_satisfiable", f"the file has {info.size} bytes")
        headers["Content-Range"] = f"bytes */{info.size}"
        return JSONResponse(body, status_code=416, headers=headers)

    status, offset, length = 200, 0, info.size
    if wanted is not None:
        status, offset, length = 206, wanted.start, wanted.length
        headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{info.size}"
    headers["Content-Length"] = str(length)
    media_type = info.content_type or "application/octet-stream"
    if request.method == "HEAD" or length == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    reader = await state.store.open_read(link.object_key, offset, length)
    # The given Content-Length is kept (no chunked encoding): a browser shows progress and a
    # client tells a cut-off download from a complete one.
    return StreamingResponse(
        reader.chunks(), status_code=status, headers=headers, media_type=media_type
    )


# HEAD too (a player or a download manager asks for the size first); one operation in the schema.
router.add_api_route(
    "/downloads/{token}",
    download,
    methods=["HEAD"],
    response_class=Response,
    include_in_schema=False,
)
