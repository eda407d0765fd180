"""Issue #13 item 7, access: failed authentication is rate limited per client address, a key in
a query string never reaches the access log, open progress streams end when their key is
revoked, and webhook signing secrets are stored encrypted (old clear rows sealed at start)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse

from polydub.api.app import create_app
from polydub.api.auth import NewKey, create_key, revoke_key
from polydub.api.secrets_at_rest import SecretBox
from polydub.errors import ConfigurationError
from polydub.settings import Settings
from polydub.stack.servers import settings_env
from tests.conftest import scratch_dir
from tests.integration.api.helpers import Media, Served, free_port, multipart_body

pytestmark = pytest.mark.integration

FAILURES_PER_MINUTE = 5


@pytest.fixture(scope="module")
def hard_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(
        update={
            "api_run_workers": False,
            "api_auth_failures_per_minute": FAILURES_PER_MINUTE,
            "api_stream_key_check_seconds": 0.2,
            "api_events_poll_seconds": 0.1,
            "api_tmp_dir": scratch_dir("polydub-hard-spool-"),
        }
    )


@pytest.fixture
async def hard(hard_settings: Settings, db_pool: asyncpg.Pool) -> AsyncIterator[Served]:
    """An API of its own: its failed-authentication buckets are its own memory."""
    served = Served(create_app(hard_settings))
    await served.start()
    yield served
    await served.stop()


async def _submit(base: str, key: NewKey, media: Media) -> str:
    body, content_type = multipart_body(
        [("target_languages", "spa")], await asyncio.to_thread(media.clip.read_bytes)
    )
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        answer = await client.post(
            "/api/v1/jobs",
            content=body,
            headers={"Authorization": f"Bearer {key.key}", "Content-Type": content_type},
        )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def test_failed_authentication_is_rate_limited_per_address(
    hard: Served, db_pool: asyncpg.Pool
) -> None:
    good = await create_key(db_pool, "good")
    async with httpx.AsyncClient(base_url=hard.url, timeout=20) as client:
        for n in range(FAILURES_PER_MINUTE):
            bad = f"pd_{n:012x}_{'A' * 43}"
            answer = await client.get("/api/v1/jobs", headers={"X-API-Key": bad})
            assert answer.status_code == 401, (n, answer.text)
        limited = await client.get("/api/v1/jobs", headers={"X-API-Key": "pd_x_guess"})
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "auth_rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # refused before any lookup: a valid key from this address waits too (else the 429
        # would tell a guessed key from a wrong one), and so does the WebSocket
        assert (
            await client.get("/api/v1/jobs", headers={"X-API-Key": good.key})
        ).status_code == 429
    url = f"ws://127.0.0.1:{hard.port}/api/v1/jobs/{uuid.uuid4()}/progress"
    async with websockets.connect(url, additional_headers={"X-API-Key": good.key}) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4429
    # a request without a key is not a guess: still the plain 401
    async with httpx.AsyncClient(base_url=hard.url, timeout=20) as client:
        assert (await client.get("/api/v1/jobs")).status_code == 401


async def test_open_streams_end_when_their_key_is_revoked(
    hard: Served, db_pool: asyncpg.Pool, media: Media
) -> None:
    key = await create_key(db_pool, "revoked-while-following")
    job_id = await _submit(hard.url, key, media)
    ended: dict[str, object] = {}

    async def read_sse() -> None:
        headers = {"Authorization": f"Bearer {key.key}"}
        async with (
            httpx.AsyncClient(base_url=hard.url, headers=headers, timeout=20) as client,
            aconnect_sse(client, "GET", f"/api/v1/jobs/{job_id}/events") as source,
        ):
            async for event in source.aiter_sse():
                if event.event == "error":
                    ended["sse"] = event.json()["error"]["code"]

    async def read_ws() -> None:
        url = f"ws://127.0.0.1:{hard.port}/api/v1/jobs/{job_id}/progress"
        async with websockets.connect(url, additional_headers={"X-API-Key": key.key}) as ws:
            with contextlib.suppress(websockets.ConnectionClosed):  # 4401 is not a clean close
                async for _ in ws:
                    pass
            ended["ws"] = (ws.close_code, ws.close_reason)

    readers = [asyncio.create_task(read_sse()), asyncio.create_task(read_ws())]
    await asyncio.sleep(1.0)
    assert not any(r.done() for r in readers)  # both follow the queued job
    revoked_at = time.monotonic()
    await revoke_key(db_pool, key.prefix)
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    assert time.monotonic() - revoked_at < 5
    assert ended == {"sse": "api_key_revoked", "ws": (4401, "api_key_revoked")}


async def test_webhook_secrets_are_stored_encrypted_and_old_clear_ones_sealed(
    hard_settings: Settings, db_pool: asyncpg.Pool
) -> None:
    box = SecretBox.from_settings(hard_settings)
    new = await create_key(db_pool, "sealed", box=box)
    stored = await db_pool.fetchval("SELECT webhook_secret FROM api_keys WHERE id = $1", new.id)
    assert stored.startswith("fernet:") and new.webhook_secret not in stored
    assert box.reveal(stored) == new.webhook_secret
    dump = await db_pool.fetchval("SELECT string_agg(t::text, '') FROM api_keys t")
    assert new.webhook_secret not in dump

    # a row from before encryption, and a rotation: the API seals both when it starts
    legacy = await create_key(db_pool, "legacy", box=box)
    await db_pool.execute(
        "UPDATE api_keys SET webhook_secret = $2 WHERE id = $1", legacy.id, legacy.webhook_secret
    )
    rotated = hard_settings.model_copy(
        update={"api_webhook_secret_keys": f"new-key,{hard_settings.api_webhook_secret_keys}"}
    )
    served = Served(create_app(rotated))
    await served.start()
    await served.stop()
    new_box = SecretBox.from_settings(rotated)
    for key in (new, legacy):
        row = await db_pool.fetchval("SELECT webhook_secret FROM api_keys WHERE id = $1", key.id)
        assert row.startswith("fernet:") and not new_box.needs_sealing(row)
        assert new_box.reveal(row) == key.webhook_secret
    # the old key alone no longer reads them: they were re-encrypted under the new one
    with pytest.raises(ConfigurationError, match="does not decrypt"):
        box.reveal(row)
    # rotate back (every key of the session's database was re-encrypted): the API starts with
    # the old key first, and an unreadable row would be logged, never stop it
    back = hard_settings.model_copy(
        update={"api_webhook_secret_keys": f"{hard_settings.api_webhook_secret_keys},new-key"}
    )
    served = Served(create_app(back))
    await served.start()
    await served.stop()
    row = await db_pool.fetchval("SELECT webhook_secret FROM api_keys WHERE id = $1", new.id)
    assert not box.needs_sealing(row) and box.reveal(row) == new.webhook_secret


def test_a_key_in_the_query_string_never_reaches_the_access_log(
    api_settings: Settings, api: Served
) -> None:
    # ``api`` (the in-process API) brings the servers up and the schema migrated.
    settings = api_settings.model_copy(
        update={"api_port": free_port(), "api_run_workers": False, "log_json": True}
    )
    env = {**os.environ, **settings_env(settings)}
    secret_key = f"pd_0123456789ab_{'S' * 43}"
    process = subprocess.Popen(
        [sys.executable, "-m", "polydub.cli", "api", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{settings.api_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        answer = httpx.get(f"{base}/api/v1/jobs", params={"api_key": secret_key, "limit": "5"})
        assert answer.status_code == 401
        httpx.get(f"{base}/api/v1/languages", params={"token": "tok-SECRET-1"})
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    access = [json.loads(line) for line in output.splitlines() if '"uvicorn.access"' in line]
    assert len(access) >= 2, output[-2000:]
    assert "SSSSSSSS" not in output and "tok-SECRET-1" not in output
    assert any("api_key=[redacted]&limit=5" in line["msg"] for line in access), access
