"""Rough edges a new user hit (issue #14, item 6), against the real API on the session's stack:
the CLI's ``jobs`` commands, the 422 that names its field, one-hop output downloads, Swagger UI
without a CDN, the media record both tiers write, and the client taking a file object."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner, Result

from polydub.api.auth import NewKey, create_key
from polydub.cli import app
from polydub.client import Client
from polydub.infra.storage import ObjectStore
from polydub.media.probe import probe
from polydub.orchestrator.state import JobStore
from tests.integration.api.helpers import FakeWorker, Media, Served

pytestmark = pytest.mark.integration

SRT = b"1\n00:00:00,000 --> 00:00:01,000\nHola\n"
VIDEO = b"\x00\x00\x00\x18ftypmp42 dubbed" * 64


async def _submit(api: Served, key: NewKey, media: Media, name: str = "talk.wav") -> uuid.UUID:
    wav = await asyncio.to_thread(media.wav.read_bytes)
    headers = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=20) as client:
        response = await client.post(
            "/api/v1/jobs",
            data={"target_languages": "spa", "source_language": "eng"},
            files={"file": (name, wav, "audio/wav")},
        )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


async def _cli(api: Served, key: NewKey, *args: str) -> Result:
    # In a thread: the CLI's client blocks, and the API serves from this test's event loop.
    runner = CliRunner()
    argv = [*args, "--api", api.url, "--key", key.key]
    return await asyncio.to_thread(runner.invoke, app, argv, env={"COLUMNS": "80"})


async def test_bad_job_id_names_the_field(api: Served, fresh_key: NewKey) -> None:
    headers = {"Authorization": f"Bearer {fresh_key.key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=20) as client:
        response = await client.get("/api/v1/jobs/not-a-uuid")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("the request is not valid: job_id: ")


async def test_output_kind_redirects_to_its_file_in_one_hop(
    api: Served, fresh_key: NewKey, media: Media, worker: FakeWorker, store: ObjectStore
) -> None:
    job_id = await _submit(api, fresh_key, media)
    await worker.claim(job_id)
    outputs = {"dubbed_audio": (VIDEO, "audio/mp4"), "subtitles_srt": (SRT, "application/x-subrip")}
    await worker.finish_target(job_id, "spa", "succeeded", store, outputs)
    await worker.finish_job(job_id, "succeeded")
    headers = {"Authorization": f"Bearer {fresh_key.key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=20) as client:
        base = f"/api/v1/jobs/{job_id}/outputs/spa"
        moved = await client.get(f"{base}/subtitles_srt")
        assert moved.status_code == 302
        assert "/api/v1/downloads/" in moved.headers["location"]
        followed = await client.get(f"{base}/dubbed_audio", follow_redirects=True)
        assert followed.status_code == 200 and followed.content == VIDEO
        assert len(followed.history) == 1  # curl -L: one hop
        missing = await client.get(f"{base}/dubbed_video")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "output_not_found"
        unknown = await client.get(f"{base}/nonsense")
        assert unknown.status_code == 422
        assert "kind" in unknown.json()["error"]["message"]
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as stranger:
        refused = await stranger.get(f"/api/v1/jobs/{job_id}/outputs/spa/subtitles_srt")
        assert refused.status_code == 401


async def test_docs_page_loads_its_assets_from_the_api(api: Served) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as client:
        page = await client.get("/api/v1/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text.lower()
        assert "/api/v1/docs/assets/swagger-ui-bundle.js" in page.text
        script = await client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        style = await client.get("/api/v1/docs/assets/swagger-ui.css")
        assert style.status_code == 200 and "swagger-ui" in style.text


async def test_duration_survives_the_workers_media_record(
    api: Served, fresh_key: NewKey, media: Media, db_pool: asyncpg.Pool
) -> None:
    job_id = await _submit(api, fresh_key, media)

    async def duration() -> Any:
        with Client(api.url, fresh_key.key) as client:
            job = await asyncio.to_thread(client.get_job, job_id)
        return job.input.duration_seconds, job.input.has_video

    assert await duration() == (pytest.approx(1.0, abs=0.05), False)
    # What the validate stage does: probe again and store the record over the API's.
    store = JobStore(db_pool)
    record = await store.claim(job_id)
    assert record is not None
    await store.record_media(record, (await asyncio.to_thread(probe, media.wav)).to_dict())
    assert await duration() == (pytest.approx(1.0, abs=0.05), False)
    shown = await _cli(api, fresh_key, "jobs", "show", str(job_id))
    assert shown.exit_code == 0, shown.output
    assert "talk.wav (1.0 s)" in shown.output


async def test_jobs_list_keeps_ids_whole_and_show_takes_a_prefix(
    api: Served, db_pool: asyncpg.Pool, media: Media
) -> None:
    key = await create_key(db_pool, "prefixes")
    # 17 ids: at least two share a first hex digit (an ambiguous prefix), by pigeonhole.
    ids = [str(await _submit(api, key, media)) for _ in range(17)]
    listed = await _cli(api, key, "jobs", "list", "--limit", "20")
    assert listed.exit_code == 0, listed.output
    assert all(job_id in listed.output for job_id in ids)  # whole, at 80 columns

    target = ids[0]
    unique = next(
        target[:n] for n in range(1, 37) if sum(i.startswith(target[:n]) for i in ids) == 1
    )
    shown = await _cli(api, key, "jobs", "show", unique)
    assert shown.exit_code == 0, shown.output
    assert target in shown.output

    shared = next(c for c, n in Counter(i[0] for i in ids).items() if n > 1)
    ambiguous = await _cli(api, key, "jobs", "show", shared)
    assert ambiguous.exit_code == 1 and "ambiguous" in ambiguous.output
    none = await _cli(api, key, "jobs", "show", "ffffffff-ffff")
    assert none.exit_code == 1 and "no job of yours starts with" in none.output
    bad = await _cli(api, key, "jobs", "show", "not-hex")
    assert bad.exit_code == 2 and "not a job id" in bad.output


async def test_download_of_a_failed_job_says_why_and_exits_1(
    api: Served, fresh_key: NewKey, media: Media, worker: FakeWorker, tmp_path: Path
) -> None:
    job_id = await _submit(api, fresh_key, media)
    await worker.claim(job_id)
    error = {"code": "tts_voice_missing", "message": "no voice for spa"}
    await worker.finish_job(job_id, "failed", error)
    result = await _cli(api, fresh_key, "jobs", "download", str(job_id), "--out", str(tmp_path))
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())  # rich wraps at 80 columns
    assert f"job {job_id} has no outputs (failed): no voice for spa (tts_voice_missing)" in said
    assert not await asyncio.to_thread(lambda: any(tmp_path.iterdir()))


async def test_client_uploads_a_binary_file_object(
    api: Served, fresh_key: NewKey, media: Media
) -> None:
    data = await asyncio.to_thread(media.wav.read_bytes)
    sent: list[tuple[int, int]] = []

    def submit() -> Any:
        with Client(api.url, fresh_key.key) as client:
            return client.create_job(
                io.BytesIO(data),
                ["spa"],
                source_language="eng",
                filename="memory.wav",
                on_progress=lambda done, total: sent.append((done, total)),
            )

    job = await asyncio.to_thread(submit)
    assert job.status == "queued" and job.input.filename == "memory.wav"
    assert job.input.bytes == len(data) and sent[-1] == (len(data), len(data))
