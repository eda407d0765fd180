"""The client's presigned uploads against the real stack (issue #14 item 6): the file goes to
object storage through the form POST /uploads reserves, then POST /jobs names the upload; used
for files from ``upload_threshold`` bytes on, or when asked; sync and async."""

from __future__ import annotations

import asyncio
import io
import itertools
import uuid
from pathlib import Path

import httpx
import pytest

from polydub.client import ApiError, AsyncClient, Client
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.schemas import JobOut
from tests.integration.api.conftest import MAX_UPLOAD, Clients
from tests.integration.api.helpers import Media, Served

pytestmark = pytest.mark.integration


class _Recorded(httpx.AsyncHTTPTransport):
    """The API requests the client made: (method, path, content type)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        kind = request.headers.get("content-type", "").split(";")[0]
        self.seen.append((request.method, request.url.path, kind))
        return await super().handle_async_request(request)


class _SyncRecorded(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = request.headers.get("content-type", "").split(";")[0]
        self.seen.append((request.method, request.url.path, kind))
        return super().handle_request(request)


async def _stored(store: ObjectStore, job_id: uuid.UUID, tmp_path: Path) -> bytes:
    local = await store.download(JobKeys(job_id).input, tmp_path / "input")
    return await asyncio.to_thread(local.read_bytes)


async def test_async_client_uses_a_presigned_upload_above_its_threshold(
    api: Served, clients: Clients, media: Media, store: ObjectStore, tmp_path: Path
) -> None:
    progress: list[tuple[int, int]] = []
    transport = _Recorded()
    size = media.clip.stat().st_size
    async with AsyncClient(
        api.url, clients.key_a.key, upload_threshold=size, transport=transport
    ) as client:
        job = await client.create_job(
            media.clip,
            "es",
            source_language="eng",
            on_progress=lambda s, t: progress.append((s, t)),
        )
    assert job.status == "queued" and job.input.filename == "clip.mp4"
    assert job.input.bytes == size and job.target_languages == ["spa"]
    assert [s for s in transport.seen if s[1] != "/api/v1/languages"] == [
        ("POST", "/api/v1/uploads", ""),
        ("POST", "/api/v1/jobs", "application/json"),
    ]
    assert progress[0] == (0, size) and progress[-1] == (size, size)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(progress))
    assert await _stored(store, job.id, tmp_path) == media.clip.read_bytes()


async def test_sync_client_presigned_by_choice_direct_by_choice_and_refusals(
    api: Served, clients: Clients, media: Media, store: ObjectStore, tmp_path: Path
) -> None:
    data = await asyncio.to_thread(media.clip.read_bytes)
    transport = _SyncRecorded()

    def run() -> tuple[JobOut, JobOut, ApiError]:
        with Client(api.url, clients.key_b.key, upload_threshold=1, transport=transport) as client:
            # A file object is sent from where it stands, through the form too.
            stream = io.BytesIO(b"ignored prefix" + data)
            stream.seek(len(b"ignored prefix"))
            chosen = client.create_job(stream, ["spa"], upload="presigned", filename="talk.mp4")
            direct = client.create_job(media.clip, ["spa"], upload="direct")
            with pytest.raises(ApiError) as caught:  # object storage enforces the size cap
                client.create_job(io.BytesIO(b"\0" * (MAX_UPLOAD + 1)), ["spa"], upload="presigned")
        return chosen, direct, caught.value

    chosen, direct, refused = await asyncio.to_thread(run)
    assert chosen.input.filename == "talk.mp4" and chosen.input.bytes == len(data)
    assert await _stored(store, chosen.id, tmp_path) == data
    posts = [s for s in transport.seen if s[0] == "POST"]
    assert posts == [
        ("POST", "/api/v1/uploads", ""),
        ("POST", "/api/v1/jobs", "application/json"),
        ("POST", "/api/v1/jobs", "multipart/form-data"),  # upload="direct" despite the threshold
        ("POST", "/api/v1/uploads", ""),  # the oversize one stops at the storage server
    ]
    assert direct.input.bytes == len(data)
    assert (refused.status, refused.code) == (400, "upload_failed")
    assert refused.detail == {"storage_code": "EntityTooLarge"}


def test_an_unknown_upload_mode_is_refused(media: Media) -> None:
    with Client("http://127.0.0.1:9", "k") as client, pytest.raises(ValueError, match="upload"):
        client.create_job(media.clip, ["spa"], upload="sideways")  # type: ignore[arg-type]
