"""The S3 server restarted under object traffic: whatever a request gets while it goes down and
comes back is classified retryable, never a permanent error that would fail a job.

It found that a stopping gateway answers some requests "403 http: Server closed", which
minio-py reads as AccessDenied (a permanent configuration error): the restart drill then failed
a job now and then. It also found that the gateway answers some HEADs "200" with no ETag,
length or type, which read as an object of 0 bytes; the store now calls that unavailable.
A server of its own, restarted five times under four clients (the client's own retries hide
most of the downtime; what does reach the caller must be retryable).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
from collections.abc import Iterator

import pytest

from polydub.errors import classify
from polydub.infra.storage import ObjectStore
from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.isolated import isolated_settings
from tests.conftest import scratch_dir

pytestmark = pytest.mark.integration

RESTARTS = 5


@pytest.fixture
def own_s3() -> Iterator[Settings]:
    root = scratch_dir("polydub-s3-restarts-")
    settings = isolated_settings(root)
    Stack(settings, only=["s3"]).up()
    try:
        yield settings
    finally:
        Stack(settings, only=["s3"]).down()
        shutil.rmtree(root, ignore_errors=True)


async def test_every_error_during_s3_restarts_is_retryable(own_s3: Settings) -> None:
    settings = own_s3
    stack = Stack(settings, only=["s3"])
    [server] = stack.servers
    seen: collections.Counter[tuple[str, bool]] = collections.Counter()
    permanent: list[str] = []
    done = asyncio.Event()
    rounds = [0]

    async def client(n: int) -> None:
        store = ObjectStore(settings)
        i = 0
        while not done.is_set():
            key, data = f"restarts/{n}/{i}", os.urandom(100_000)
            try:
                await store.put_bytes(key, data, "application/octet-stream")
                assert (await store.stat(key)).size == len(data)
                assert await store.get_bytes(key) == data
                rounds[0] += 1
            except AssertionError:
                raise
            except Exception as exc:
                error = classify(exc)
                seen[(error.code, error.retryable)] += 1
                if not error.retryable:
                    permanent.append(f"{error.code}: {error.message}")
                await asyncio.sleep(0.02)
            i += 1

    clients = [asyncio.create_task(client(n)) for n in range(4)]
    for _ in range(RESTARTS):
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.process(server).stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(Stack(settings, only=["s3"]).up)
    before = rounds[0]
    await asyncio.sleep(1.0)  # and it serves again
    done.set()
    await asyncio.gather(*clients)
    print(f"errors during {RESTARTS} S3 restarts (code, retryable): {dict(seen)}")
    assert permanent == []
    assert rounds[0] > before  # it serves again
