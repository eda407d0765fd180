"""Downloads (issue #15, item 1): by default a job's files stream through the API behind signed,
expiring links that need no key (a browser follows them), with Range requests; with
``s3_public_endpoint`` set the links are presigned against that address instead."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from polydub.api.app import create_app
from polydub.api.auth import NewKey, create_key, revoke_key
from polydub.api.routes.downloads import DownloadLink, sign
from polydub.infra.storage import ObjectStore
from polydub.settings import Settings
from tests.integration.api.helpers import FakeWorker, Media, Served

pytestmark = pytest.mark.integration

VIDEO = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, not a multiple of one
SRT = b"1\n00:00:00,000 --> 00:00:01,000\nHola\n"


async def _finished_job(
    client: httpx.AsyncClient, media: Media, worker: FakeWorker, store: ObjectStore
) -> uuid.UUID:
    wav = await asyncio.to_thread(Path(media.wav).read_bytes)
    response = await client.post(
        "/api/v1/jobs",
        data={"target_languages": "spa", "source_language": "eng"},
        files={"file": ("talk show.wav", wav, "audio/wav")},
    )
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    await worker.claim(job_id)
    outputs = {"dubbed_video": (VIDEO, "video/mp4"), "subtitles_srt": (SRT, "application/x-subrip")}
    await worker.finish_target(job_id, "spa", "succeeded", store, outputs)
    await worker.finish_job(job_id, "succeeded")
    return job_id


async def _links(client: httpx.AsyncClient, job_id: uuid.UUID) -> dict[str, Any]:
    response = await client.get(f"/api/v1/jobs/{job_id}/outputs/spa")
    assert response.status_code == 200, response.text
    return {f["kind"]: f for f in response.json()["files"]}


@dataclass(frozen=True)
class Owner:
    client: httpx.AsyncClient
    key: NewKey


@pytest.fixture
async def owner(api: Served, db_pool: asyncpg.Pool) -> AsyncIterator[Owner]:
    """A key of its own: one test revokes it."""
    key = await create_key(db_pool, "downloads")
    headers = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=20) as client:
        yield Owner(client, key)


@pytest.fixture
async def browser(api: Served) -> AsyncIterator[httpx.AsyncClient]:
    """No key: what a browser's <a href> or <video src> sends."""
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as client:
        yield client


async def test_files_stream_through_the_api_with_ranges(
    owner: Owner,
    browser: httpx.AsyncClient,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
) -> None:
    job_id = await _finished_job(owner.client, media, worker, store)
    files = await _links(owner.client, job_id)
    video = files["dubbed_video"]
    # Relative to the API (no in-cluster S3 name in it): works wherever the API is reached.
    assert video["url"].startswith("/api/v1/downloads/")
    assert video["filename"] == "talk_show.spa.mp4"

    whole = await browser.get(video["url"])
    assert whole.status_code == 200 and whole.content == VIDEO
    assert whole.headers["content-length"] == str(len(VIDEO))
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert 'attachment; filename="talk_show.spa.mp4"' in whole.headers["content-disposition"]
    assert whole.headers["x-content-type-options"] == "nosniff"
    srt = await browser.get(files["subtitles_srt"]["url"])
    assert srt.content == SRT and srt.headers["content-type"].startswith("application/x-subrip")

    size = len(VIDEO)
    etag = whole.headers["etag"]
    cases = {
        "bytes=100-199": (206, VIDEO[100:200], f"bytes 100-199/{size}"),
        "bytes=-10": (206, VIDEO[-10:], f"bytes {size - 10}-{size - 1}/{size}"),
        f"bytes={size - 5}-": (206, VIDEO[-5:], f"bytes {size - 5}-{size - 1}/{size}"),
        f"bytes=1000-{size * 2}": (206, VIDEO[1000:], f"bytes 1000-{size - 1}/{size}"),
        "bytes=0-0,5-6": (200, VIDEO, None),  # several ranges: the whole file, as RFC 9110 allows
        "pages=1-2": (200, VIDEO, None),
    }
    for header, (status, body, content_range) in cases.items():
        got = await browser.get(video["url"], headers={"Range": header})
        assert (got.status_code, got.headers.get("content-range")) == (status, content_range)
        assert got.content == body, header
        assert got.headers["content-length"] == str(len(body))
    past = await browser.get(video["url"], headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["error"]["code"] == "range_not_satisfiable"
    # If-Range: the range only while the file is the one the client has
    same = await browser.get(video["url"], headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == VIDEO[:10]
    changed = await browser.get(video["url"], headers={"Range": "bytes=0-9", "If-Range": '"x"'})
    assert changed.status_code == 200 and changed.content == VIDEO

    head = await browser.head(video["url"])
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size)


async def test_a_large_file_is_streamed_not_buffered(
    api_settings: Settings,
    owner: Owner,
    browser: httpx.AsyncClient,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
) -> None:
    job_id = await _finished_job(owner.client, media, worker, store)
    big = os.urandom(48 * 1024 * 1024)
    key = f"jobs/{job_id}/outputs/spa/big.mp4"
    await store.put_bytes(key, big, "video/mp4")
    digest = hashlib.sha256(big).hexdigest()
    link = DownloadLink(job_id, key, "big.mp4", int(time.time()) + 60)
    url = f"/api/v1/downloads/{sign(api_settings, link)}"
    del big

    # The API runs in this process: its allocations are traced with the client's.
    tracemalloc.start()
    try:
        received, hasher, chunks = 0, hashlib.sha256(), 0
        async with browser.stream("GET", url) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                hasher.update(chunk)
                received += len(chunk)
                chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == 48 * 1024 * 1024 and hasher.hexdigest() == digest and chunks > 10
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while streaming 48 MiB"


async def test_links_are_signed_expire_and_follow_the_key(
    api_settings: Settings,
    db_pool: asyncpg.Pool,
    owner: Owner,
    browser: httpx.AsyncClient,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
) -> None:
    job_id = await _finished_job(owner.client, media, worker, store)
    url = (await _links(owner.client, job_id))["subtitles_srt"]["url"]
    token = url.rsplit("/", 1)[1]
    assert (await browser.get(url)).status_code == 200

    def code(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["code"]

    body, mac = token.rsplit(".", 1)
    tampered = f"{body}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    assert code(await browser.get(f"/api/v1/downloads/{tampered}")) == (
        403,
        "invalid_download_link",
    )
    assert code(await browser.get("/api/v1/downloads/not-a-token")) == (
        403,
        "invalid_download_link",
    )
    other = api_settings.model_copy(update={"s3_secret_key": "another-secret"})
    key = f"jobs/{job_id}/outputs/spa/subtitles_srt"
    forged = sign(other, DownloadLink(job_id, key, "", int(time.time()) + 60))
    assert code(await browser.get(f"/api/v1/downloads/{forged}")) == (403, "invalid_download_link")

    def link(object_key: str, *, expires_in: int = 60, job: uuid.UUID = job_id) -> str:
        signed = sign(
            api_settings, DownloadLink(job, object_key, "", int(time.time()) + expires_in)
        )
        return f"/api/v1/downloads/{signed}"

    assert code(await browser.get(link(key, expires_in=-1))) == (403, "download_link_expired")
    # only the job's own outputs, never its input or another prefix, even when signed
    assert code(await browser.get(link(f"inputs/{job_id}/source"))) == (
        403,
        "invalid_download_link",
    )
    assert code(await browser.get(link(f"jobs/{job_id}/nothing/here"))) == (404, "file_not_found")
    gone = uuid.uuid4()
    assert code(await browser.get(link(f"jobs/{gone}/x", job=gone))) == (404, "job_not_found")

    # Revoking the owner's key kills its links at once (a presigned S3 link would live on).
    await revoke_key(db_pool, owner.key.prefix)
    assert code(await browser.get(url)) == (403, "api_key_revoked")


async def test_a_public_endpoint_gives_presigned_links(
    api_settings: Settings,
    db_pool: asyncpg.Pool,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
) -> None:
    public = api_settings.model_copy(
        update={"s3_public_endpoint": api_settings.s3_endpoint, "api_run_workers": False}
    )
    served = Served(create_app(public))
    await served.start()
    key = await create_key(db_pool, "presigned-downloads")
    headers = {"Authorization": f"Bearer {key.key}"}
    try:
        async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=20) as client:
            job_id = await _finished_job(client, media, worker, store)
            video = (await _links(client, job_id))["dubbed_video"]
        assert video["url"].startswith(f"http://{api_settings.s3_endpoint}/")
        async with httpx.AsyncClient() as s3:
            got = await s3.get(video["url"])
        assert got.status_code == 200 and got.content == VIDEO
        assert 'filename="talk_show.spa.mp4"' in got.headers["content-disposition"]
    finally:
        await served.stop()
