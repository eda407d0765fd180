"""Jobs from a source_url on the real stack (issue #14 item 5): the API checks only the URL's
form and policy and creates the job with no input; the real worker's validate stage fetches it
to the job's input key, pins it, probes it, and fails the job with a typed reason when the fetch
is refused. The media is served over http on 127.0.0.1, which only the test-only setting
source_url_allow_loopback admits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from nats.aio.client import Client as NATS

from polydub.api.app import create_app
from polydub.api.auth import create_key
from polydub.infra.queue import ConsumerPolicy, connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.jobs import JobKeys, JobMessage
from polydub.orchestrator.pipeline import PipelineRunner, Stage
from polydub.orchestrator.services import Services
from polydub.orchestrator.stages.ingest import extract_audio, validate
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.worker import Worker, WorkerOptions
from polydub.settings import Settings
from tests.integration.api.helpers import Media, Served, wait_for
from tests.source_server import SourceServer, serving

pytestmark = pytest.mark.integration

CAP = 512 * 1024


@pytest.fixture(scope="module")
def source(media: Media) -> Iterator[SourceServer]:
    with serving(media.wav, big=CAP) as served:
        yield served


@pytest.fixture
async def enabled(
    api_settings: Settings, db_pool: asyncpg.Pool
) -> AsyncIterator[tuple[Settings, httpx.AsyncClient, NATS]]:
    """An API and a job stream with source URLs on (and loopback http, for the test server)."""
    name = f"URLJOBS_{uuid.uuid4().hex[:8]}"
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
    key = await create_key(db_pool, "source-url")
    headers = {"Authorization": f"Bearer {key.key}"}
    try:
        async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=20) as client:
            yield settings, client, nc
    finally:
        await served.stop()
        await nc.jetstream().delete_stream(name)
        await nc.close()


def _body(url: str) -> dict[str, Any]:
    return {"source_url": url, "target_languages": ["es"]}


async def test_disabled_by_default(clients: Any) -> None:
    got = await clients.a.post("/api/v1/jobs", json=_body("https://example.com/talk.mp4"))
    assert got.status_code == 422, got.text
    assert got.json()["error"]["code"] == "source_url_disabled"


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.7/talk.mp4",
        "https://[::1]/talk.mp4",
        "https://localhost/talk.mp4",
        "ftp://example.com/talk.mp4",
    ],
)
async def test_private_and_metadata_hosts_are_refused_by_the_api(
    enabled: tuple[Settings, httpx.AsyncClient, NATS], url: str
) -> None:
    _settings, client, _nc = enabled
    got = await client.post("/api/v1/jobs", json=_body(url))
    assert got.status_code == 422, got.text
    assert got.json()["error"]["code"] == "source_url_refused"


async def _run_worker(
    settings: Settings, nc: NATS, pool: asyncpg.Pool, job_id: uuid.UUID, tmp_path: Path
) -> asyncpg.Record:
    """The real worker with the real validate and extract_audio stages, until the job ends."""
    stages = [Stage("validate", "job", validate), Stage("extract_audio", "job", extract_audio)]
    jobs = JobStore(pool)
    triton = InferenceClient("127.0.0.1:9", timeout=5.0)  # no stage here calls a model
    services = Services.create(settings, jobs, ObjectStore(settings), triton)
    options = WorkerOptions(
        concurrency=1, drain_seconds=0.5, retry_base_delay=0.1, retry_max_delay=0.2,
        policy=ConsumerPolicy(1.5, 3),
    )  # fmt: skip
    worker: Worker

    def runner() -> PipelineRunner:
        return PipelineRunner(stages, jobs, services, worker.publish, tmp_path)

    worker = Worker(settings, nc, nc.jetstream(), jobs, runner, options)
    task = asyncio.create_task(worker.run())
    message = JobMessage(job_id)
    await nc.jetstream().publish(
        settings.jobs_subject, message.to_bytes(), headers={"Nats-Msg-Id": message.msg_id}
    )

    async def finished() -> asyncpg.Record | None:
        row: asyncpg.Record = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        return row if row["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        return await wait_for(finished)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await triton.close()


async def test_a_good_url_is_fetched_by_the_worker_pinned_and_probed(
    enabled: tuple[Settings, httpx.AsyncClient, NATS],
    source: SourceServer,
    db_pool: asyncpg.Pool,
    store: ObjectStore,
    media: Media,
    tmp_path: Path,
) -> None:
    settings, client, nc = enabled
    before = len(source.hits)
    got = await client.post("/api/v1/jobs", json=_body(f"{source.url}/to-clip"))
    assert got.status_code == 202, got.text
    job = got.json()
    assert job["input"] == {
        "filename": "to-clip", "bytes": None, "duration_seconds": None, "has_video": None,
    }  # fmt: skip
    assert len(source.hits) == before  # the API never fetches
    job_id = uuid.UUID(job["id"])
    row = await _run_worker(settings, nc, db_pool, job_id, tmp_path)
    assert row["status"] == "succeeded", (row["error_code"], row["error_message"])
    assert source.hits[before:] == ["/to-clip", "/clip.wav"]  # the redirect, re-checked
    stored = await store.stat(JobKeys(job_id).input)
    assert row["input_etag"] == stored.etag and row["input_bytes"] == stored.size
    assert stored.size == (await asyncio.to_thread(media.wav.read_bytes)).__len__()
    shown = (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert shown["input"]["bytes"] == stored.size
    assert shown["input"]["duration_seconds"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/to-private", "source_url_refused"),
        ("/to-metadata", "source_url_refused"),
        ("/endless", "source_url_too_large"),
        ("/nothing", "source_url_unreachable"),
    ],
)
async def test_a_refused_fetch_fails_the_job_with_its_reason(
    enabled: tuple[Settings, httpx.AsyncClient, NATS],
    source: SourceServer,
    db_pool: asyncpg.Pool,
    store: ObjectStore,
    tmp_path: Path,
    path: str,
    code: str,
) -> None:
    settings, client, nc = enabled
    got = await client.post("/api/v1/jobs", json=_body(f"{source.url}{path}"))
    assert got.status_code == 202, got.text
    job_id = uuid.UUID(got.json()["id"])
    row = await _run_worker(settings, nc, db_pool, job_id, tmp_path)
    assert (row["status"], row["error_code"], row["attempt"]) == ("failed", code, 1)
    assert not await store.exists(JobKeys(job_id).input)
