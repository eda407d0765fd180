"""``Client.create_job_from_url`` and its async twin against the real API and the real worker's
validate and extract_audio stages: the client names the URL, the API creates the job without
fetching, the worker fetches it (or fails the job with its reason). The media is served over
http on 127.0.0.1, which only the test-only setting source_url_allow_loopback admits."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from polydub.api.app import create_app
from polydub.api.auth import create_key
from polydub.client import ApiError, AsyncClient, Client
from polydub.infra.queue import ConsumerPolicy, connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.settings import Settings
from tests.e2e.harness import run_polydub
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media, Served
from tests.integration.api.test_source_url import _run_worker
from tests.source_server import SourceServer, serving

pytestmark = pytest.mark.integration

CAP = 512 * 1024


@dataclass(frozen=True)
class UrlApi:
    settings: Settings
    url: str
    key: str
    nc: NATS


@pytest.fixture(scope="module")
def source(media: Media) -> Iterator[SourceServer]:
    with serving(media.wav, big=CAP) as served:
        yield served


@pytest.fixture
async def url_api(api_settings: Settings, db_pool: asyncpg.Pool) -> AsyncIterator[UrlApi]:
    """An API and a job stream with source URLs on (and loopback http, for the test server)."""
    name = f"CLIENTURL_{uuid.uuid4().hex[:8]}"
    settings = api_settings.model_copy(
        update={
            "source_url_enabled": True,
            "source_url_allow_loopback": True,
            "source_url_max_bytes": CAP,
            "jobs_stream": name,
            "jobs_subject": f"{name}.jobs",
        }
    )
    nc = await connect(settings)
    await ensure_jobs_stream(nc.jetstream(), settings, ConsumerPolicy(1.5, 3))
    served = Served(create_app(settings))
    await served.start()
    key = await create_key(db_pool, "client-source-url")
    try:
        yield UrlApi(settings, served.url, key.key, nc)
    finally:
        await served.stop()
        await nc.jetstream().delete_stream(name)
        await nc.close()


async def test_the_sync_client_submits_a_url_the_worker_fetches(
    url_api: UrlApi,
    source: SourceServer,
    db_pool: asyncpg.Pool,
    store: ObjectStore,
    media: Media,
    tmp_path: Path,
) -> None:
    before = len(source.hits)

    def submit() -> uuid.UUID:
        with Client(url_api.url, url_api.key) as client:
            job = client.create_job_from_url(
                f"{source.url}/to-clip",
                ["es"],
                source_language="eng",
                name="from a url",
                metadata={"ticket": 7},
                idempotency_key="url-once",
            )
            again = client.create_job_from_url(
                f"{source.url}/to-clip",
                ["es"],
                source_language="eng",
                name="from a url",
                metadata={"ticket": 7},
                idempotency_key="url-once",
            )
            assert again.id == job.id  # a retried submission is the same job
            assert job.status == "queued" and job.target_languages == ["spa"]
            assert job.input.filename == "to-clip" and job.input.bytes is None
            assert job.name == "from a url" and job.metadata == {"ticket": 7}
            return job.id

    job_id = await asyncio.to_thread(submit)
    assert len(source.hits) == before  # neither the client nor the API fetches
    row = await _run_worker(url_api.settings, url_api.nc, db_pool, job_id, tmp_path)
    assert row["status"] == "succeeded", (row["error_code"], row["error_message"])
    assert source.hits[before:] == ["/to-clip", "/clip.wav"]
    stored = await store.stat(JobKeys(job_id).input)
    assert stored.size == len(await asyncio.to_thread(media.wav.read_bytes))

    def shown() -> float | None:
        with Client(url_api.url, url_api.key) as client:
            return client.get_job(job_id).input.duration_seconds

    assert await asyncio.to_thread(shown) == pytest.approx(1.0, abs=0.05)


async def test_the_async_client_sees_a_refused_fetch_fail_the_job(
    url_api: UrlApi, source: SourceServer, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with AsyncClient(url_api.url, url_api.key) as client:
        job = await client.create_job_from_url(
            f"{source.url}/to-private", "spa", source_language="eng", review=True
        )
        assert job.status == "queued" and job.options["review"] is True
        assert job.options["source_url"] == f"{source.url}/to-private"
        row = await _run_worker(url_api.settings, url_api.nc, db_pool, job.id, tmp_path)
        assert row["status"] == "failed"
        failed = await client.get_job(job.id)
        assert failed.error is not None and failed.error.code == "source_url_refused"


async def test_a_server_without_source_urls_refuses_the_client(
    api: Served, clients: Clients
) -> None:
    async with AsyncClient(api.url, clients.key_a.key) as client:
        with pytest.raises(ApiError) as caught:
            await client.create_job_from_url("https://example.com/talk.mp4", ["spa"])
    assert caught.value.code == "source_url_disabled" and caught.value.status == 422


async def test_polydub_dub_url_submits_to_the_api_and_says_why_it_was_refused(
    api: Served, clients: Clients
) -> None:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    args = ("dub", "--url", "https://example.com/talk.mp4", "--to", "spa", "--api", api.url)
    done = await asyncio.to_thread(
        run_polydub, *args, "--key", clients.key_a.key, env=env, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "source_url_disabled" in done.stdout, done.stdout
    both = await asyncio.to_thread(
        run_polydub, *args, "/etc/hostname", "--key", clients.key_a.key, env=env, timeout=60
    )
    assert both.returncode == 2 and "one of them" in both.stdout, both.stdout
