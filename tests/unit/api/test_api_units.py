"""Pure logic of the API tier: file names, options, cursors, signatures, languages,
error statuses."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from polydub.api.auth import KEY_RE, generate_key, hash_key, key_from_headers
from polydub.api.db.jobs import decode_cursor, encode_cursor
from polydub.api.errors import PayloadTooLarge, TooManyRequests, status_for
from polydub.api.multipart import InvalidFilename, check_content_length, validate_filename
from polydub.api.routes.languages import supported
from polydub.api.webhooks import backoff_seconds, check_callback_url, sign, verify
from polydub.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from polydub.jobs import JobMessage
from polydub.schemas import JobOptions
from polydub.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "raw",
    [
        b"../x.mp4",
        b"a/b.mp4",
        b"a\\b.mp4",
        b"..",
        b".",
        b"nul\x00.mp4",
        b"\xff\xfe.mp4",
        b"bell\x07.mp4",
        b"rtl\xe2\x80\xaegpj.exe",
        b" lead.mp4",
        b"x" * 256,
    ],
)
def test_hostile_filenames_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidFilename):
        validate_filename(raw)


def test_ordinary_filenames_are_kept_verbatim() -> None:
    assert validate_filename("Entrevista – café (1).mp4".encode()) == "Entrevista – café (1).mp4"
    assert validate_filename("映画.mkv".encode()) == "映画.mkv"
    assert validate_filename(b"") is None


def test_content_length_is_checked_before_reading() -> None:
    check_content_length("1000", 2000)
    check_content_length(None, 10)
    with pytest.raises(PayloadTooLarge):
        check_content_length(str(10**9), 1000)


def test_options_normalise_and_validate_languages() -> None:
    options = JobOptions.model_validate(
        {"target_languages": ["SPA, fra", "spa"], "source_language": "ENG", "num_speakers": "2"}
    )
    assert options.target_languages == ["spa", "fra"]
    assert options.source_language == "eng" and options.num_speakers == 2
    assert options.options_json()["keep_background"] is True
    for bad, kind in [
        ({"target_languages": ["xx"]}, "unsupported_language"),
        ({"target_languages": ["spa"], "source_language": "spa"}, "same_language"),
        ({"target_languages": [" , "]}, "missing_target_language"),
        ({"target_languages": ["spa"], "start_time": 5, "end_time": 2}, "invalid_time_range"),
        ({"target_languages": ["spa"], "speed": 2}, "extra_forbidden"),
    ]:
        with pytest.raises(ValidationError) as caught:
            JobOptions.model_validate(bad)
        assert caught.value.errors()[0]["type"] == kind


def test_cursor_round_trip_and_garbage() -> None:
    stamp, ident = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(stamp, ident)) == (stamp, ident)
    with pytest.raises(InvalidInput):
        decode_cursor("not-a-cursor")


def test_job_message_ids() -> None:
    job = uuid.UUID("12345678-1234-5678-1234-567812345678")
    first = JobMessage(job, 0)
    assert (first.msg_id, first.to_json()) == (str(job), {"job_id": str(job), "attempt_hint": 0})
    assert JobMessage(job, 3).msg_id == f"{job}:retry:3"


def test_keys_format_and_headers() -> None:
    key, prefix = generate_key()
    match = KEY_RE.match(key)
    assert match is not None and match[1] == prefix
    assert len(hash_key(key)) == 32
    assert key_from_headers("Bearer abc", None) == "abc"
    assert key_from_headers("Basic abc", None) is None
    assert key_from_headers(None, " k ") == "k"


def test_webhook_signature() -> None:
    body = b'{"type":"job.succeeded"}'
    now = int(time.time())
    header = sign("whsec_x", now, body)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert verify("whsec_x", header, body)
    assert not verify("whsec_y", header, body)
    assert not verify("whsec_x", header, body + b" ")
    assert not verify("whsec_x", sign("whsec_x", now - 3600, body), body)  # replayed late


def test_webhook_backoff_grows_and_is_capped() -> None:
    settings = Settings(api_webhook_backoff_base_seconds=2, api_webhook_backoff_max_seconds=60)
    assert 1 <= backoff_seconds(1, settings) <= 2
    assert 4 <= backoff_seconds(3, settings) <= 8
    assert 30 <= backoff_seconds(20, settings) <= 60


def test_callback_urls_to_private_addresses_are_refused() -> None:
    settings = Settings()
    for url in ["http://localhost/x", "http://127.0.0.1:9/x", "http://10.0.0.5/", "http://[::1]/"]:
        with pytest.raises(InvalidInput):
            check_callback_url(url, settings)
    check_callback_url("https://hooks.example.com/polydub", settings)
    check_callback_url("http://127.0.0.1/x", Settings(api_webhook_allow_private=True))


def test_languages_follow_the_model_repository() -> None:
    result = supported(["whisper_encoder", "nllb", "mms_tts_deu", "vad"])
    by_code = {lang.code: lang for lang in result.languages}
    assert result.auto_detect is True
    assert by_code["deu"].dub_target and not by_code["spa"].dub_target
    assert by_code["spa"].transcribe and by_code["spa"].translate
    nothing = supported([])
    assert not nothing.auto_detect and not any(lang.translate for lang in nothing.languages)


def test_error_statuses() -> None:
    assert status_for(NotFound("x")) == 404
    assert status_for(Conflict("x")) == 409
    assert status_for(InvalidInput("x")) == 422
    assert status_for(ServiceUnavailable("x")) == 503
    limited = TooManyRequests("x", retry_after=0.2)
    assert status_for(limited) == 429 and limited.retry_after == 1
