"""The API under test: a real uvicorn in the test loop, on the session's real stack, with its
own Triton (an empty-weights model repository: enough for the index and for readiness)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from nats.aio.client import Client as NATS

from polydub.api.app import create_app
from polydub.api.auth import NewKey, create_key
from polydub.infra.queue import connect
from polydub.infra.storage import ObjectStore
from polydub.manifest import MANIFEST_MODEL, Manifest, ServedModel, manifest_path
from polydub.settings import Settings
from polydub.stack import Stack
from tests.checkout import place_templates
from tests.conftest import scratch_dir
from tests.integration.api.helpers import FakeWorker, Media, Served, free_port, make_media

# Models whose folders make up the repository index; none is ever loaded.
INDEX_MODELS = ("whisper", "nllb", "mms_tts_spa", "mms_tts_fra")
MAX_UPLOAD = 512 * 1024
INDEX_MANIFEST = Manifest(
    {
        "whisper": ServedModel(
            "whisper", "whisper", "openai/whisper-base", "MIT", False, "int8", revision="abc123"
        ),
        "nllb": ServedModel("nllb", "nllb", "random weights (tiny)", "CC-BY-NC-4.0", True),
    }
)


@pytest.fixture(scope="session")
def api_triton(stack_settings: Settings) -> Iterator[Settings]:
    root = scratch_dir("polydub-api-triton-")
    root.chmod(0o755)
    repo = root / "model_repository"
    for name in INDEX_MODELS:
        (repo / name).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text('backend: "python"\n')
    # The one model loaded: the manifest, so /languages can name where the weights come from.
    place_templates(repo, [MANIFEST_MODEL])
    manifest_path(repo).write_text(INDEX_MANIFEST.to_json())
    settings = stack_settings.model_copy(
        update={
            "stack_dir": root,
            "model_repository": repo,
            "triton_http_port": free_port(),
            "triton_grpc_port": free_port(),
            "triton_metrics_port": free_port(),
        }
    )
    port = settings.triton_grpc_port
    settings = settings.model_copy(update={"triton_url": f"127.0.0.1:{port}"})
    stack = Stack(settings, only=["triton"])
    try:
        stack.up()
        httpx.post(
            f"http://127.0.0.1:{settings.triton_http_port}/v2/repository/models/"
            f"{MANIFEST_MODEL}/load",
            timeout=120,
        ).raise_for_status()
        yield settings
    finally:
        stack.down()


@pytest.fixture(scope="session")
def api_settings(stack_settings: Settings, api_triton: Settings) -> Settings:
    return stack_settings.model_copy(
        update={
            # Own stream and subject: the orchestrator's tests own JOBS.
            "jobs_stream": "APITEST",
            "jobs_subject": "apitest.jobs",
            "triton_url": api_triton.triton_url,
            "triton_http_port": api_triton.triton_http_port,
            "media_max_bytes": MAX_UPLOAD,
            "media_max_seconds": 5.0,
            "api_webhook_allow_private": True,
            "api_webhook_backoff_base_seconds": 0.2,
            "api_webhook_backoff_max_seconds": 0.4,
            "api_webhook_poll_seconds": 0.1,
            "api_webhook_timeout_seconds": 2.0,
            "api_events_poll_seconds": 0.25,
            "api_sse_keepalive_seconds": 0.5,
            "api_outbox_poll_seconds": 0.1,
            "api_outbox_publish_timeout_seconds": 0.5,
            "retention_interval_seconds": 3600.0,
            "reconcile_interval_seconds": 0.0,  # test_reconcile runs its own passes
            "api_tmp_dir": scratch_dir("polydub-api-spool-"),
        }
    )


@pytest.fixture(scope="session")
async def api(api_settings: Settings, db_pool: asyncpg.Pool) -> AsyncIterator[Served]:
    served = Served(create_app(api_settings))
    await served.start()
    yield served
    await served.stop()


@dataclass(frozen=True)
class Clients:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    key_a: NewKey
    key_b: NewKey


def _client(base: str, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=20.0)


@pytest.fixture(scope="session")
async def clients(api: Served, db_pool: asyncpg.Pool) -> AsyncIterator[Clients]:
    key_a = await create_key(db_pool, "tenant-a")
    key_b = await create_key(db_pool, "tenant-b")
    a, b = _client(api.url, key_a.key), _client(api.url, key_b.key)
    yield Clients(a, b, key_a, key_b)
    await a.aclose()
    await b.aclose()


@pytest.fixture
async def fresh_key(db_pool: asyncpg.Pool) -> NewKey:
    return await create_key(db_pool, "fresh")


@pytest.fixture
async def anon(api: Served) -> AsyncIterator[httpx.AsyncClient]:
    client = _client(api.url, None)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
async def nc(api_settings: Settings, services: Stack) -> AsyncIterator[NATS]:
    conn = await connect(api_settings, name="api-tests")
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def store(api_settings: Settings, services: Stack) -> ObjectStore:
    return ObjectStore(api_settings)


@pytest.fixture(scope="session")
def worker(db_pool: asyncpg.Pool, nc: NATS, api_settings: Settings) -> FakeWorker:
    return FakeWorker(db_pool, nc, api_settings)
