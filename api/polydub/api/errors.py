"""One error envelope for every answer that is not a success:

    {"error": {"code": "<machine-readable>", "message": "<for people>", "detail": <any | null>}}

Errors are the ones of ``polydub.errors``; the few the HTTP layer adds (413, 415, 401, 429) are
subclasses with an ``http_status``. FastAPI's own validation and routing errors, and anything
unexpected, are turned into the same envelope here, so a client parses exactly one shape.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from polydub.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    Overloaded,
    PermanentError,
    PolydubError,
    RetryableError,
    ServiceUnavailable,
    classify,
)

log = logging.getLogger("polydub.api")


class ApiError(PermanentError):
    """Base of the errors only the HTTP layer raises; ``http_status`` picks the status."""

    http_status: ClassVar[int] = 400


class Unauthenticated(ApiError):
    code = "unauthenticated"
    http_status = 401


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"
    http_status = 415


class TooManyRequests(Overloaded):
    """Rate limit or quota: answered 429 with Retry-After (whole seconds, at least 1)."""

    code = "rate_limited"
    http_status = 429

    def __init__(
        self, message: str, *, retry_after: float, code: str | None = None, detail: object = None
    ) -> None:
        super().__init__(message, code=code, detail=detail)
        self.retry_after = max(1, math.ceil(retry_after))


def job_not_found(job_id: object) -> NotFound:
    # The same answer for a job that does not exist and one that is someone else's.
    return NotFound(f"job {job_id} not found", code="job_not_found")


# Class -> status, most specific first; an ``http_status`` on the class or instance wins.
_STATUS: list[tuple[type[PolydubError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (InvalidInput, 422),
    (ConfigurationError, 500),
    (PermanentError, 400),
    (Overloaded, 503),
    (ServiceUnavailable, 503),
    (RetryableError, 500),
]


# Refusals of a file's type by polydub.media (shared with the worker, so it knows no HTTP).
_MEDIA_TYPE_CODES = frozenset({"unsupported_media_type", "playlist_not_allowed"})


def status_for(exc: PolydubError) -> int:
    explicit = getattr(exc, "http_status", None)
    if isinstance(explicit, int):
        return explicit
    if isinstance(exc, InvalidInput) and exc.code in _MEDIA_TYPE_CODES:
        return 415
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def envelope(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "detail": detail}}


def error_response(exc: PolydubError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    elif status == 503:
        headers["Retry-After"] = "5"
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="polydub"'
    return JSONResponse(
        envelope(exc.code, exc.message, exc.detail), status_code=status, headers=headers
    )


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]


# Pydantic error types that name the problem well enough to be the envelope's code.
_NAMED = {
    "extra_forbidden": "unknown_field",
    "unsupported_language": "unsupported_language",
    "same_language": "same_language",
    "invalid_time_range": "invalid_time_range",
    "missing_target_language": "missing_target_language",
    "metadata_too_large": "metadata_too_large",
    "invalid_metadata": "invalid_metadata",
    "finite_number": "non_finite_number",  # inf, NaN, 1e309: the message names the field
}


def validation_response(exc: RequestValidationError) -> JSONResponse:
    detail = _validation_detail(exc)
    named = {_NAMED.get(d["type"]) for d in detail}
    if len(named) == 1 and None not in named:
        code = named.pop()
        assert code is not None
        message = "; ".join(f"{d['loc'][-1]}: {d['msg']}" if d["loc"] else d["msg"] for d in detail)
        if code == "unknown_field":
            message = "unknown field(s): " + ", ".join(d["loc"][-1] for d in detail)
        return JSONResponse(envelope(code, message, detail), status_code=422)
    # Name each field ("job_id: Input should be a valid UUID..."): "not valid" alone sends the
    # user looking through every part of the request.
    fields = "; ".join(f"{_field(d['loc'])}: {d['msg']}" if d["loc"] else d["msg"] for d in detail)
    return JSONResponse(
        envelope("validation_error", f"the request is not valid: {fields}", detail),
        status_code=422,
    )


def _field(loc: list[str]) -> str:
    # ["path", "job_id"] -> "job_id"; ["body", "options", "num_speakers"] -> "options.num_speakers"
    parts = loc[1:] if len(loc) > 1 and loc[0] in ("path", "query", "body", "header") else loc
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PolydubError)
    async def _polydub(request: Request, exc: PolydubError) -> JSONResponse:
        if status_for(exc) >= 500:
            log.warning("request failed", extra={"code": exc.code, "error": exc.message})
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            envelope(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = classify(exc)
        log.exception("unexpected error", extra={"code": error.code})
        if isinstance(error, ServiceUnavailable):
            return error_response(error)
        return JSONResponse(envelope("internal_error", "internal error"), status_code=500)
