"""The one error hierarchy of polydub, and the mapping from third-party errors into it.

    PolydubError                    code: machine-readable, stable; message: for people
    ├── RetryableError              the same work may succeed later: nak(delay) / retry with backoff
    │   ├── ServiceUnavailable      a dependency is down, restarting or timed out
    │   ├── Overloaded              back-pressure: a full queue or a rate limit
    │   └── InternalError           an unexpected exception; bounded by the queue's MaxDeliver
    └── PermanentError              retrying cannot help: term() the message, fail with the reason
        ├── InvalidInput            the user's media, language or options are wrong
        ├── NotFound                an object, job or model that does not exist
        ├── Conflict                a state change that is not allowed (retry a running job)
        └── ConfigurationError      the deployment is wrong (missing model, bad credentials)

``classify(exc)`` turns any exception raised by tritonclient, nats, asyncpg, minio/urllib3 or the
standard library into one of these, so callers decide ack / nak / term on one type, not on six.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar


class PolydubError(Exception):
    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.detail = detail

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


class RetryableError(PolydubError):
    code = "retryable"
    retryable = True


class ServiceUnavailable(RetryableError):
    code = "service_unavailable"


class Overloaded(RetryableError):
    code = "overloaded"


class InternalError(RetryableError):
    code = "internal_error"


class PermanentError(PolydubError):
    code = "permanent"


class InvalidInput(PermanentError):
    code = "invalid_input"


class NotFound(PermanentError):
    code = "not_found"


class Conflict(PermanentError):
    code = "conflict"


class ConfigurationError(PermanentError):
    code = "configuration_error"


# gRPC status names that mean "try again": the server is there but not ready or too busy.
_RETRYABLE_GRPC = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "UNKNOWN"}
_OVERLOADED_GRPC = {"RESOURCE_EXHAUSTED"}
_NOT_FOUND_GRPC = {"NOT_FOUND"}
# PostgreSQL SQLSTATE classes that are transient: connection (08), rollback / serialization (40),
# insufficient resources (53), operator intervention such as admin shutdown (57).
_RETRYABLE_SQLSTATE_CLASSES = {"08", "40", "53", "57"}
# S3 error codes that are transient on MinIO and AWS alike.
_RETRYABLE_S3 = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "XMinioServerNotInitialized",
}
_NOT_FOUND_S3 = {"NoSuchKey", "NoSuchBucket", "NoSuchUpload"}


def classify(exc: BaseException) -> PolydubError:
    """Map any exception to the hierarchy above; a PolydubError is returned unchanged."""
    if isinstance(exc, PolydubError):
        return exc
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    message = f"{type(exc).__name__}: {exc}"
    for mapper in (_from_triton, _from_nats, _from_asyncpg, _from_s3, _from_stdlib):
        mapped = mapper(exc, message)
        if mapped is not None:
            mapped.__cause__ = exc
            return mapped
    internal = InternalError(message, detail={"exception": name})
    internal.__cause__ = exc
    return internal


def _from_triton(exc: BaseException, message: str) -> PolydubError | None:
    from tritonclient.utils import InferenceServerException

    if not isinstance(exc, InferenceServerException):
        return None
    status = (exc.status() or "").rsplit(".", 1)[-1].upper()
    text = (exc.message() or "").lower()
    if status in _OVERLOADED_GRPC or "queue size" in text or "exceeds maximum queue" in text:
        return Overloaded(message, code="triton_overloaded")
    if status in _NOT_FOUND_GRPC or "unknown model" in text or "is not found" in text:
        return ConfigurationError(message, code="model_not_found")
    if status in _RETRYABLE_GRPC or "not ready" in text or "unavailable" in text:
        return ServiceUnavailable(message, code="triton_unavailable")
    if status == "INVALID_ARGUMENT":
        return PermanentError(message, code="triton_invalid_argument")
    # HTTP-client errors carry no gRPC status; treat server-side failures as transient.
    return ServiceUnavailable(message, code="triton_error")


def _from_nats(exc: BaseException, message: str) -> PolydubError | None:
    import nats.errors
    import nats.js.errors

    if isinstance(exc, nats.js.errors.NotFoundError):
        return NotFound(message, code="nats_not_found")
    if isinstance(exc, nats.js.errors.BadRequestError):
        return ConfigurationError(message, code="nats_bad_request")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError | nats.js.errors.ServerError):
        return ServiceUnavailable(message, code="nats_unavailable")
    if isinstance(exc, nats.errors.Error):
        # Timeouts, closed connections, no servers, slow consumers, ...: all transient.
        return ServiceUnavailable(message, code="nats_unavailable")
    return None


def _from_asyncpg(exc: BaseException, message: str) -> PolydubError | None:
    import asyncpg

    if isinstance(exc, asyncpg.exceptions.InterfaceError | asyncpg.InternalClientError):
        # Client-side: a closed pool or a released connection, or a protocol state left behind
        # when the server ended the session as a statement was sent; reconnecting fixes it.
        return ServiceUnavailable(message, code="postgres_unavailable")
    if not isinstance(exc, asyncpg.PostgresError):
        return None
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES:
        return ServiceUnavailable(message, code="postgres_unavailable")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(message, code="postgres_unique_violation")
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        return InvalidInput(message, code="postgres_invalid_data")
    return PermanentError(message, code="postgres_error")


def _from_s3(exc: BaseException, message: str) -> PolydubError | None:
    import urllib3.exceptions
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        if exc.code == "AccessDenied" and not exc.request_id:
            # S3's own refusals carry a request id (MinIO, AWS, the JuiceFS gateway). Without
            # one, minio-py made the code up from a bare 403: a gateway shutting down answers
            # "403 http: Server closed". Transient, not our keys.
            return ServiceUnavailable(message, code="s3_unavailable")
        if exc.code in _NOT_FOUND_S3:
            return NotFound(message, code="object_not_found")
        if exc.code in _RETRYABLE_S3:
            return ServiceUnavailable(message, code="s3_unavailable")
        if exc.code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return ConfigurationError(message, code="s3_access_denied")
        return PermanentError(message, code="s3_error")
    if isinstance(exc, ServerError | InvalidResponseError):
        # InvalidResponseError: a reply that is not S3's XML (a proxy's page, a closing server)
        return ServiceUnavailable(message, code="s3_unavailable")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return ServiceUnavailable(message, code="s3_unavailable")
    return None


def _from_stdlib(exc: BaseException, message: str) -> PolydubError | None:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError):
        return ServiceUnavailable(
            message, code="timeout" if isinstance(exc, TimeoutError) else "connection_error"
        )
    if isinstance(exc, OSError):
        return ServiceUnavailable(message, code="os_error")
    return None
