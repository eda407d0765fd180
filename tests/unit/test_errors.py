import asyncpg
import nats.errors
import nats.js.errors
import pytest
from minio.error import InvalidResponseError, S3Error
from tritonclient.utils import InferenceServerException

from polydub.errors import (
    ConfigurationError,
    Conflict,
    InternalError,
    InvalidInput,
    NotFound,
    Overloaded,
    PermanentError,
    RetryableError,
    ServiceUnavailable,
    classify,
)

pytestmark = pytest.mark.unit


def _s3(code: str, request_id: str | None = "req") -> S3Error:
    return S3Error(None, code, "msg", "/res", request_id, "host")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (
            InferenceServerException("down", status="StatusCode.UNAVAILABLE"),
            ServiceUnavailable,
            "triton_unavailable",
        ),
        (
            InferenceServerException("Exceeds maximum queue size", status="StatusCode.UNAVAILABLE"),
            Overloaded,
            "triton_overloaded",
        ),
        (
            InferenceServerException(
                "Request for unknown model: 'x' is not found", status="StatusCode.NOT_FOUND"
            ),
            ConfigurationError,
            "model_not_found",
        ),
        (
            InferenceServerException("unexpected shape", status="StatusCode.INVALID_ARGUMENT"),
            PermanentError,
            "triton_invalid_argument",
        ),
        (nats.errors.TimeoutError(), ServiceUnavailable, "nats_unavailable"),
        (nats.errors.NoServersError(), ServiceUnavailable, "nats_unavailable"),
        (nats.js.errors.NotFoundError(), NotFound, "nats_not_found"),
        (
            asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
            ServiceUnavailable,
            "postgres_unavailable",
        ),
        (
            asyncpg.InternalClientError("cannot switch to state 15"),
            ServiceUnavailable,
            "postgres_unavailable",
        ),
        (
            asyncpg.exceptions.SerializationError("retry"),
            ServiceUnavailable,
            "postgres_unavailable",
        ),
        (asyncpg.exceptions.UniqueViolationError("dup"), Conflict, "postgres_unique_violation"),
        (asyncpg.exceptions.CheckViolationError("bad"), InvalidInput, "postgres_invalid_data"),
        (_s3("NoSuchKey"), NotFound, "object_not_found"),
        (_s3("SlowDown"), ServiceUnavailable, "s3_unavailable"),
        (_s3("AccessDenied"), ConfigurationError, "s3_access_denied"),
        # minio-py's own reading of a bare 403 (a server shutting down), not S3's verdict
        (_s3("AccessDenied", request_id=None), ServiceUnavailable, "s3_unavailable"),
        (_s3("NoSuchKey", request_id=None), NotFound, "object_not_found"),
        (
            InvalidResponseError(403, "text/plain", "http: Server closed"),
            ServiceUnavailable,
            "s3_unavailable",
        ),
        (ConnectionRefusedError(), ServiceUnavailable, "connection_error"),
        (TimeoutError(), ServiceUnavailable, "timeout"),
        (ValueError("bug"), InternalError, "internal_error"),
    ],
)
def test_classify_maps_third_party_errors(exc: BaseException, kind: type, code: str) -> None:
    mapped = classify(exc)
    assert type(mapped) is kind
    assert mapped.code == code
    assert mapped.__cause__ is exc


def test_retryable_and_permanent_split() -> None:
    assert classify(ConnectionResetError()).retryable is True
    assert classify(_s3("NoSuchKey")).retryable is False
    # Unknown exceptions are retried, bounded by the queue's MaxDeliver, then fail the job.
    assert isinstance(classify(KeyError("x")), RetryableError)


def test_polydub_errors_pass_through_with_their_code() -> None:
    err = InvalidInput("no audio stream", code="no_audio_stream", detail={"streams": 1})
    assert classify(err) is err
    assert err.to_dict() == {
        "code": "no_audio_stream",
        "message": "no audio stream",
        "detail": {"streams": 1},
    }
    assert InvalidInput.code == "invalid_input"  # the instance override leaves the class alone
