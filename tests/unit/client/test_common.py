"""The client's pure parts: the multipart body it streams, where outputs may be written, and
the events it makes from polled jobs."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from python_multipart.multipart import parse_options_header

from polydub.api.multipart import validate_filename
from polydub.client import JobEvent
from polydub.client._common import MultipartFile, job_fields, output_path, polled_events
from polydub.client._presigned import json_body
from polydub.schemas import JobOut

pytestmark = pytest.mark.unit


def _parts(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    _, params = parse_options_header(content_type)
    boundary = b"--" + params[b"boundary"]
    chunks = body.split(boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        parts.append((head, data.removesuffix(b"\r\n")))
    return parts


@pytest.mark.parametrize("name", ["talk.mp4", 'he said "hi".mp4', "café – été.mkv"])
def test_multipart_body_streams_fields_then_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 3000)  # several chunks
    seen: list[tuple[int, int]] = []
    fields = job_fields(
        ["spa", "fra"],
        source_language="auto",
        num_speakers=2,
        keep_background=True,
        subtitles_only=False,
        start_time=None,
        end_time=1.5,
        callback_url=None,
    )
    body = MultipartFile(path, fields, lambda sent, total: seen.append((sent, total)))
    data = b"".join(body)
    assert len(data) == body.length == int(body.headers()["Content-Length"])
    assert b"".join(asyncio.run(_collect(body))) == data  # the async iteration is the same
    parts = _parts(data, body.content_type)
    assert [p[1] for p in parts[:-1]] == [b"spa,fra", b"auto", b"true", b"false", b"2", b"1.5"]
    head, content = parts[-1]
    assert content == path.read_bytes()
    _, params = parse_options_header(head.split(b"\r\n")[0].partition(b": ")[2])
    raw = params.get(b"filename") or b""
    if b"filename*" in head:  # RFC 5987: what the API decodes
        from urllib.parse import unquote_to_bytes

        raw = unquote_to_bytes(head.split(b"UTF-8''")[1].split(b"\r\n")[0])
    assert validate_filename(raw) == name
    size = path.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size) and len(seen) > 3


async def _collect(body: MultipartFile) -> list[bytes]:
    return [chunk async for chunk in body]


def test_outputs_never_land_outside_the_folder(tmp_path: Path) -> None:
    assert output_path(tmp_path, "spa", "talk.spa.mp4") == tmp_path / "spa" / "talk.spa.mp4"
    assert output_path(tmp_path, "spa", "../../etc/passwd") == tmp_path / "spa" / "passwd"
    for language, name in (("..", "a.mp4"), ("spa", ".."), ("a/b", "x"), ("spa", "")):
        with pytest.raises(ValueError):
            output_path(tmp_path, language, name)


def _job(status: str, targets: list[tuple[str, str, str | None, float]]) -> JobOut:
    now = datetime.now(UTC)
    job_id = uuid.uuid4()
    return JobOut.model_validate(
        {
            "id": job_id,
            "status": status,
            "stage": "diarize" if status == "running" else None,
            "progress": 0.25,
            "percent": 25,
            "eta_seconds": 9.0,
            "source_language": "auto",
            "detected_language": None,
            "target_languages": [t[0] for t in targets],
            "targets": [
                {"language": lang, "status": st, "stage": stage, "progress": p}
                for lang, st, stage, p in targets
            ],
            "options": {},
            "input": {"filename": "a.mp4", "bytes": 1, "duration_seconds": 1.0, "has_video": True},
            "callback_url": None,
            "cancel_requested": False,
            "retries": 0,
            "error": None,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
            "expires_at": None,
            "links": {"self": "", "events": "", "progress": "", "outputs": {}},
        }
    )


def test_polled_jobs_become_events_each_target_end_once() -> None:
    seen: dict[str, str] = {}
    running = polled_events(_job("running", [("spa", "running", "translate", 0.5)]), seen)
    assert [(e.type, e.stage, e.language) for e in running] == [
        ("progress", "diarize", None),
        ("progress", "translate", "spa"),
    ]
    finished = _job("succeeded", [("spa", "succeeded", None, 1.0)])
    first = polled_events(finished, seen)
    assert [(e.type, e.status) for e in first][-2:] == [
        ("target", "succeeded"),
        ("state", "succeeded"),
    ]
    assert first[-1].terminal and not first[0].terminal
    again = polled_events(finished, seen)
    assert [e.type for e in again] == ["progress", "progress", "state"]  # no second target end


def test_events_keep_fields_the_client_does_not_know_yet() -> None:
    event = JobEvent.model_validate_json('{"id": 7, "type": "progress", "stage": "mix", "new": 1}')
    assert event.id == 7 and event.model_extra == {"new": 1} and not event.terminal


def test_a_job_waiting_in_review_ends_the_polled_events() -> None:
    seen: dict[str, str] = {}
    waiting = polled_events(_job("review", [("spa", "review", None, 0.5)]), seen)
    assert [(e.type, e.status) for e in waiting][-2:] == [("target", "review"), ("state", "review")]
    assert waiting[-1].terminal  # wait() returns: nothing happens until a render


def test_review_and_the_source_url_body_are_sent_as_the_server_reads_them() -> None:
    fields = job_fields(
        "spa",
        source_language="eng",
        num_speakers=None,
        keep_background=True,
        subtitles_only=False,
        review=True,
        start_time=None,
        end_time=None,
        callback_url=None,
    )
    assert ("review", "true") in fields
    body = json_body(fields, source_url="https://example.com/a.mp4")
    assert body["source_url"] == "https://example.com/a.mp4" and body["review"] == "true"
    assert body["target_languages"] == ["spa"] and "upload_id" not in body
    quiet = job_fields(
        "spa",
        source_language="eng",
        num_speakers=None,
        keep_background=True,
        subtitles_only=False,
        start_time=None,
        end_time=None,
        callback_url=None,
    )
    assert all(name != "review" for name, _ in quiet)  # an older server never sees the field
