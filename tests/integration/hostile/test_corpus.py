"""Hostile input, end to end: every corpus file is refused with a clear 4xx by the API (multipart
and presigned upload alike), or, when it gets past the API, ends as a failed job with its reason
(or as an ordinary job when it is harmless). No local file is ever opened (an inotify canary, and
/etc/passwd's content never shows up), every ffprobe/ffmpeg runs with the file-only protocol
whitelist, and the API stays healthy.

The bad-input matrix of tests/integration/api/test_bad_input.py (filename rules, form fields,
limits, a half-truncated MP4, a playlist and a concat list) is not repeated here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from urllib.parse import quote_from_bytes

import asyncpg
import httpx
import pytest

from polydub.api.auth import NewKey
from polydub.errors import PolydubError
from polydub.infra.storage import ObjectStore
from polydub.jobs import TERMINAL
from polydub.media.probe import Limits, probe
from polydub.orchestrator.main import run_worker
from polydub.orchestrator.worker import WorkerOptions
from polydub.settings import Settings
from tests.integration.api.helpers import Served, multipart_body
from tests.integration.hostile.corpus import ACCEPTED, CASES, Canary, Case, Material

pytestmark = pytest.mark.integration

FIELDS = [("target_languages", "spa"), ("source_language", "eng")]
PASSWD_MARK = "root:x:0:0"


CASES_BY_NAME = {case.name: case for case in CASES}
NAMES = list(CASES_BY_NAME)


@pytest.mark.parametrize("name", NAMES)
async def test_probe_answers_as_documented(
    name: str, material: Material, canary: Canary, tmp_path: Path
) -> None:
    """The one probe (what POST /jobs and the validate stage both run) on each file, directly:
    the code the corpus documents, the same for the API and the worker."""
    case = CASES_BY_NAME[name]
    data = case.make(material)
    path = tmp_path / "upload"
    path.write_bytes(data)
    try:
        info = await asyncio.to_thread(probe, path, Limits.from_settings(Settings()))
        answer = None
        assert info.duration > 0 and info.audio
    except PolydubError as exc:
        answer = exc.code
    assert answer == case.worker
    assert answer == case.api.code and (answer is None) == (case.api == ACCEPTED)
    assert canary.touched() == []


async def _footprint(pool: asyncpg.Pool, store: ObjectStore, key: NewKey) -> tuple[int, int]:
    jobs = await pool.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", key.id)
    return jobs, len(await store.list_keys("inputs/"))


def _assert_whitelisted(commands: list[list[str]]) -> None:
    """Every ffprobe/ffmpeg saw only the file protocol and read its input by a file: URL."""
    assert commands, "no ffprobe/ffmpeg ran"
    for argv in commands:
        if Path(argv[0]).name not in ("ffprobe", "ffmpeg"):
            continue
        joined = " ".join(argv)
        if "-i" not in argv and not any(a.startswith("file:") for a in argv):
            continue  # e.g. ffmpeg -filters
        assert "-protocol_whitelist" in argv, joined
        allowed = argv[argv.index("-protocol_whitelist") + 1]
        assert allowed in ("file", "pipe"), joined
        inputs = [argv[i + 1] for i, a in enumerate(argv) if a == "-i"] or [argv[-1]]
        for source in inputs:
            assert source.startswith(("file:", "pipe:")), joined
            if source.startswith("file:") and "polydub-upload-" in source:
                assert "-format_whitelist" in argv, joined


async def _cancel(client: httpx.AsyncClient, job_id: str) -> None:
    # Accepted here only to show the API lets it through; the worker test runs its own copies.
    response = await client.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("name", NAMES)
async def test_multipart_upload(
    name: str,
    material: Material,
    canary: Canary,
    client: httpx.AsyncClient,
    hostile_key: NewKey,
    db_pool: asyncpg.Pool,
    hostile_settings: Settings,
    commands: list[list[str]],
) -> None:
    case = CASES_BY_NAME[name]
    data = case.make(material)
    store = ObjectStore(hostile_settings)
    before = await _footprint(db_pool, store, hostile_key)
    body, content_type = multipart_body(FIELDS, data, case.filename)
    response = await client.post(
        "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == case.api.status, response.text
    assert canary.marker not in response.text and PASSWD_MARK not in response.text
    if case.api.status == 202:
        job = response.json()
        assert job["input"]["filename"] == case.filename.decode()
        row = await db_pool.fetchrow(
            "SELECT input_key FROM jobs WHERE id = $1", uuid.UUID(job["id"])
        )
        assert row["input_key"] == f"inputs/{job['id']}/source"  # never the user's name
        await _cancel(client, job["id"])
    else:
        error = response.json()["error"]
        assert error["code"] == case.api.code and error["message"]
        assert await _footprint(db_pool, store, hostile_key) == before
    if data and case.api.status != 415:  # a 415 is decided on the first bytes: no ffprobe
        _assert_whitelisted(commands)
    assert canary.touched() == []


@pytest.mark.parametrize("name", NAMES)
async def test_presigned_upload(
    name: str,
    material: Material,
    canary: Canary,
    client: httpx.AsyncClient,
    db_pool: asyncpg.Pool,
    hostile_settings: Settings,
) -> None:
    """The same bytes PUT straight to S3 through a presigned URL: validated all the same."""
    case = CASES_BY_NAME[name]
    data = case.make(material)
    store = ObjectStore(hostile_settings)
    reserved = await client.post("/api/v1/uploads", params={"filename": "upload.bin"})
    assert reserved.status_code == 201, reserved.text
    upload = reserved.json()
    async with httpx.AsyncClient(timeout=30) as s3:
        sent = await s3.post(upload["url"], data=upload["fields"], files={"file": ("f", data)})
    assert sent.status_code == 204, sent.text
    response = await client.post(
        "/api/v1/jobs",
        json={
            "upload_id": upload["upload_id"],
            "target_languages": ["spa"],
            "source_language": "eng",
        },
    )
    expected = case.api  # the multipart answer: both paths run the one sniff and probe
    assert response.status_code == expected.status, response.text
    assert canary.marker not in response.text and PASSWD_MARK not in response.text
    keys = [f"{prefix}/{upload['upload_id']}/source" for prefix in ("inputs", "uploads")]
    if expected.status == 202:
        assert response.json()["id"] == upload["upload_id"]
        await _cancel(client, upload["upload_id"])
    else:
        assert response.json()["error"]["code"] == expected.code
        for key in keys:  # the rejected object and its copy are deleted
            assert not await store.exists(key)
        assert not await db_pool.fetchval(
            "SELECT 1 FROM uploads WHERE id = $1", uuid.UUID(upload["upload_id"])
        )
    assert canary.touched() == []


# File names past those of test_bad_input.py: (raw name, accepted?)
FILENAMES = [
    (b"/etc/passwd", False),  # absolute
    (b"clip.mp4/../../../etc/passwd", False),
    (b"\xc0\xae\xc0\xae\xc0\xafetc", False),  # overlong UTF-8 for "../"
    (b"\xed\xa0\x80.mp4", False),  # a UTF-16 surrogate encoded in UTF-8
    ("\u202egpj.exe".encode(), False),  # right-to-left override
    ("clip\u200b.mp4".encode(), False),  # zero-width space
    (b" clip.mp4", False),
    (b"a" * 256 + b".mp4", False),
    ("\uff0e\uff0e\uff0fetc\uff0fpasswd".encode(), True),  # fullwidth: no separator, metadata
    ("vid\u00e9o \u65e5\u672c.mp4".encode(), True),
    (b"CON", True),
    (b"$(reboot);`id`.mp4", True),
]


@pytest.mark.parametrize(("raw", "accepted"), FILENAMES, ids=[repr(n)[:40] for n, _ in FILENAMES])
async def test_filenames_are_metadata_or_refused(
    raw: bytes,
    accepted: bool,
    material: Material,
    client: httpx.AsyncClient,
    db_pool: asyncpg.Pool,
    hostile_settings: Settings,
) -> None:
    clip = material.base.wav
    body, content_type = multipart_body(FIELDS, clip, raw)
    response = await client.post(
        "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
    )
    # The same name through filename*= (RFC 5987) and through the presigned reservation.
    star = body.replace(
        b'filename="' + raw + b'"',
        b"filename*=UTF-8''" + "".join(f"%{b:02X}" for b in raw).encode(),
    )
    response_star = await client.post(
        "/api/v1/jobs", content=star, headers={"Content-Type": content_type}
    )
    reserved = await client.post(f"/api/v1/uploads?filename={quote_from_bytes(raw, safe='')}")
    if accepted:
        for answer in (response, response_star):
            assert answer.status_code == 202, answer.text
            job = answer.json()
            assert job["input"]["filename"] == raw.decode()
            key = await db_pool.fetchval(
                "SELECT input_key FROM jobs WHERE id = $1", uuid.UUID(job["id"])
            )
            assert key == f"inputs/{job['id']}/source"
            await _cancel(client, job["id"])
        assert reserved.status_code == 201
        upload = reserved.json()
        assert upload["fields"]["key"] == f"uploads/{upload['upload_id']}/source"
    else:
        for answer in (response, response_star):
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "invalid_filename"
        # The query string is decoded by the framework (bad UTF-8 becomes U+FFFD), so a
        # reservation may keep a cleaned name: metadata only, never a separator, never a key.
        assert reserved.status_code in (201, 400, 422), reserved.text
        if reserved.status_code == 201:
            upload = reserved.json()
            name = await db_pool.fetchval(
                "SELECT filename FROM uploads WHERE id = $1", uuid.UUID(upload["upload_id"])
            )
            assert name is None or not set(name) & {"/", "\\", "\0"}, name
            assert name is None or not name.startswith(".."), name
            assert upload["fields"]["key"] == f"uploads/{upload['upload_id']}/source"


async def _wait_terminal(pool: asyncpg.Pool, ids: list[uuid.UUID], limit: float) -> None:
    async with asyncio.timeout(limit):
        while True:
            done = await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[]) AND status = ANY($2)",
                ids,
                list(TERMINAL),
            )
            if done == len(ids):
                return
            await asyncio.sleep(0.2)


async def test_what_gets_past_the_api_ends_as_a_job_with_its_reason(
    material: Material,
    canary: Canary,
    client: httpx.AsyncClient,
    db_pool: asyncpg.Pool,
    hostile_settings: Settings,
    hostile_api: Served,
    tiny_models: list[str],
    commands: list[list[str]],
    tmp_path: Path,
) -> None:
    """Every file the API accepts runs through a real worker (tiny models): the ones the
    worker's probe refuses fail at validate with its code; the harmless ones finish like any
    job (succeeded, or failed with a reason). Nothing reads the canary or /etc/passwd."""
    accepted = [c for c in CASES if c.api.status == 202]
    submitted: dict[uuid.UUID, Case] = {}
    for case in accepted:
        # Files the worker accepts get a full dub: extract and mux read them too.
        fields = FIELDS if case.worker is None else [*FIELDS, ("subtitles_only", "true")]
        body, content_type = multipart_body(fields, case.make(material), case.filename)
        response = await client.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 202, response.text
        submitted[uuid.UUID(response.json()["id"])] = case
    worker = asyncio.create_task(
        run_worker(
            hostile_settings,
            WorkerOptions(concurrency=2, retry_base_delay=0.2),
            workdir=tmp_path / "work",
            handle_signals=False,
        )
    )
    try:
        await _wait_terminal(db_pool, list(submitted), limit=180)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    store = ObjectStore(hostile_settings)
    outcomes = {}
    for job_id, case in submitted.items():
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        outcomes[case.name] = (job["status"], (job["error"] or {}).get("code"))
        text = json.dumps(job)
        assert canary.marker not in text and PASSWD_MARK not in text
        if case.worker is not None:
            assert job["status"] == "failed", (case.name, job)
            assert job["error"]["code"] == case.worker and job["error"]["message"]
            stages = await db_pool.fetch(
                "SELECT stage, status FROM job_stages WHERE job_id = $1", job_id
            )
            assert [(s["stage"], s["status"]) for s in stages] == [("validate", "running")]
        else:
            assert job["status"] in ("succeeded", "failed"), (case.name, job)
            if job["status"] == "failed":
                assert job["error"]["code"] and job["error"]["message"]
        for key in await store.list_keys(f"jobs/{job_id}/"):
            if key.endswith("/"):
                continue
            stored = await store.get_bytes(key)
            assert canary.marker.encode() not in stored and PASSWD_MARK.encode() not in stored
    _assert_whitelisted(commands)
    assert canary.touched() == []
    live = await client.get("/health/live")
    assert live.status_code == 200
    print("hostile outcomes:", json.dumps(outcomes, indent=1))
