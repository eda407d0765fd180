"""The API creates its bucket (issue #15): a fresh object store (the chart's bundled MinIO) has
none, and nothing else makes it. Every replica tries at start; racing replicas are fine."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from polydub.api.app import create_app
from polydub.infra.storage import ObjectStore, make_minio
from polydub.settings import Settings
from polydub.stack import Stack
from tests.integration.api.helpers import Served, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_bucket(api_settings: Settings, services: Stack) -> Iterator[Settings]:
    """Settings naming a bucket that does not exist yet; removed afterwards."""
    settings = api_settings.model_copy(
        update={"s3_bucket": f"fresh-{uuid.uuid4().hex[:12]}", "api_run_workers": False}
    )
    client = make_minio(settings)
    assert not client.bucket_exists(settings.s3_bucket)
    yield settings
    if client.bucket_exists(settings.s3_bucket):
        client.remove_bucket(settings.s3_bucket)


async def test_concurrent_creates_all_succeed_once(fresh_bucket: Settings) -> None:
    stores = [ObjectStore(fresh_bucket) for _ in range(8)]
    created = await asyncio.gather(*(s.ensure_bucket() for s in stores))
    assert created.count(True) <= 1  # a store whose create lost the race reports "was there"
    assert make_minio(fresh_bucket).bucket_exists(fresh_bucket.s3_bucket)
    assert await stores[0].ensure_bucket() is False  # and again: nothing to do


async def test_replicas_starting_together_create_the_bucket(
    fresh_bucket: Settings, db_pool: asyncpg.Pool
) -> None:
    replicas = [Served(create_app(fresh_bucket)) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in replicas))
    try:

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=10) as client:
                answers = [await client.get(f"{r.url}/health/ready") for r in replicas]
            return all(a.status_code == 200 for a in answers)

        # readiness includes S3: it answers once the bucket exists
        await wait_for(ready, within=30, interval=0.2)
        assert make_minio(fresh_bucket).bucket_exists(fresh_bucket.s3_bucket)
        store = ObjectStore(fresh_bucket)
        await store.put_bytes("probe", b"x")
        assert await store.get_bytes("probe") == b"x"
        await store.delete_prefix("probe")
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
