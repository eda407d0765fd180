"""Who may do what: API keys (hashed, revocable), the ownership matrix over every job route,
the per-key rate limit and concurrent-job quota (429 + Retry-After), and idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from polydub.api.auth import create_key, revoke_key
from polydub.infra.storage import ObjectStore
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media, Served

pytestmark = pytest.mark.integration


def _form(targets: str = "spa") -> dict[str, str]:
    return {"target_languages": targets, "source_language": "eng"}


async def _file(media: Media) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("a.wav", await asyncio.to_thread(Path(media.wav).read_bytes), "audio/wav")}


async def test_keys_are_stored_hashed_and_revocable(
    api: Served, db_pool: asyncpg.Pool, anon: httpx.AsyncClient
) -> None:
    new = await create_key(db_pool, "revocable")
    row = await db_pool.fetchrow("SELECT key_hash, prefix FROM api_keys WHERE id = $1", new.id)
    assert bytes(row["key_hash"]) == hashlib.sha256(new.key.encode()).digest()
    assert new.key.startswith(f"pd_{row['prefix']}_")
    # The key in clear is nowhere in the table.
    dump = await db_pool.fetchval("SELECT string_agg(t::text, '') FROM api_keys t")
    assert new.key.split("_", 2)[2] not in dump

    missing = await anon.get("/api/v1/jobs")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    malformed = await anon.get("/api/v1/jobs", headers={"X-API-Key": "letmein"})
    assert malformed.json()["error"]["code"] == "invalid_api_key"
    forged = new.key[:-4] + ("AAAA" if not new.key.endswith("AAAA") else "BBBB")
    wrong = await anon.get("/api/v1/jobs", headers={"Authorization": f"Bearer {forged}"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"

    ok = await anon.get("/api/v1/jobs", headers={"X-API-Key": new.key})
    assert ok.status_code == 200 and ok.json() == {"items": [], "next_cursor": None}
    await revoke_key(db_pool, row["prefix"])
    # Replicas cache keys; the revocation reaches them by NOTIFY at commit, within moments.
    async with asyncio.timeout(5):
        while True:
            revoked = await anon.get("/api/v1/jobs", headers={"X-API-Key": new.key})
            if revoked.status_code != 200:
                break
            await asyncio.sleep(0.01)
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "api_key_revoked"


async def test_ownership_matrix_every_job_route_is_404_for_another_key(
    api: Served, clients: Clients, media: Media, store: ObjectStore
) -> None:
    created = await clients.a.post("/api/v1/jobs", data=_form(), files=await _file(media))
    assert created.status_code == 202
    job_id = created.json()["id"]
    unknown = str(uuid.uuid4())
    routes = [
        ("GET", "/api/v1/jobs/{id}"),
        ("DELETE", "/api/v1/jobs/{id}"),
        ("POST", "/api/v1/jobs/{id}/retry"),
        ("GET", "/api/v1/jobs/{id}/events"),
        ("GET", "/api/v1/jobs/{id}/outputs/spa"),
        ("GET", "/api/v1/jobs/{id}/outputs/spa?preview_start=0&preview_end=1"),
        ("DELETE", "/api/v1/jobs/{id}/data"),
    ]
    for method, template in routes:
        theirs = await clients.b.request(method, template.format(id=job_id))
        nobody = await clients.b.request(method, template.format(id=unknown))
        assert theirs.status_code == 404, (method, template, theirs.text)
        # Indistinguishable from a job that does not exist (apart from the id in the text).
        assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"] == "job_not_found"
        assert (
            theirs.json()["error"]["message"].replace(job_id, unknown)
            == (nobody.json()["error"]["message"])
        )
    listed = (await clients.b.get("/api/v1/jobs")).json()
    assert job_id not in [j["id"] for j in listed["items"]]

    url = f"ws://127.0.0.1:{api.port}/api/v1/jobs/{job_id}/progress"
    async with websockets.connect(url, additional_headers={"X-API-Key": clients.key_b.key}) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4404
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4401

    # The owner still sees it, untouched by the other key's DELETE and retry.
    mine = (await clients.a.get(f"/api/v1/jobs/{job_id}")).json()
    assert mine["status"] == "queued" and mine["cancel_requested"] is False
    assert await store.exists(f"inputs/{job_id}/source")


async def test_rate_limit_answers_429_with_retry_after(api: Served, db_pool: asyncpg.Pool) -> None:
    key = await create_key(db_pool, "slow", rate_limit_per_minute=3)
    async with httpx.AsyncClient(base_url=api.url, headers={"X-API-Key": key.key}) as client:
        statuses = [(await client.get("/api/v1/jobs")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        limited = await client.get("/api/v1/jobs")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        # 3 a minute: the next token is about 20 s away.
        assert 1 <= int(limited.headers["retry-after"]) <= 20
        # Refused requests take nothing: the bucket still refills on time.
        await db_pool.execute(
            "UPDATE api_rate_buckets SET updated_at = updated_at - interval '21 seconds'"
            " WHERE key_id = $1",
            key.id,
        )
        assert (await client.get("/api/v1/jobs")).status_code == 200
        assert (await client.get("/api/v1/jobs")).status_code == 429


async def test_concurrent_job_quota(api: Served, db_pool: asyncpg.Pool, media: Media) -> None:
    key = await create_key(db_pool, "quota", max_concurrent_jobs=2)
    async with httpx.AsyncClient(
        base_url=api.url, headers={"X-API-Key": key.key}, timeout=20
    ) as client:
        files = await _file(media)
        results = await asyncio.gather(
            *(client.post("/api/v1/jobs", data=_form(), files=files) for _ in range(4))
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [202, 202, 429, 429]
        refused = next(r for r in results if r.status_code == 429)
        assert refused.json()["error"]["code"] == "concurrent_jobs_quota"
        assert int(refused.headers["retry-after"]) >= 1
        assert await db_pool.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", key.id) == 2
        # Cancelling one frees a slot.
        first = next(r for r in results if r.status_code == 202).json()["id"]
        await client.delete(f"/api/v1/jobs/{first}")
        again = await client.post("/api/v1/jobs", data=_form(), files=await _file(media))
        assert again.status_code == 202


async def test_idempotency_key_returns_the_same_job(
    api: Served, db_pool: asyncpg.Pool, media: Media, store: ObjectStore
) -> None:
    key = await create_key(db_pool, "idem")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"X-API-Key": key.key}, timeout=20
    ) as client:
        headers = {"Idempotency-Key": "order-42"}
        # Two at once with the same key: one job; the twin's upload is dropped.
        first, second = await asyncio.gather(
            client.post("/api/v1/jobs", data=_form(), files=await _file(media), headers=headers),
            client.post("/api/v1/jobs", data=_form(), files=await _file(media), headers=headers),
        )
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        third = await client.post(
            "/api/v1/jobs", data=_form(), files=await _file(media), headers=headers
        )
        assert third.json()["id"] == first.json()["id"]
        assert third.headers["idempotent-replayed"] == "true"
        other = await client.post(
            "/api/v1/jobs",
            data=_form(),
            files=await _file(media),
            headers={"Idempotency-Key": "order-43"},
        )
        assert other.json()["id"] != first.json()["id"]
    job_id = first.json()["id"]
    assert await db_pool.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", key.id) == 2
    assert (
        await db_pool.fetchval("SELECT count(*) FROM outbox WHERE payload->>'job_id' = $1", job_id)
        == 1
    )
    owned = {k.split("/")[1] for k in await store.list_keys("inputs/")}
    ids = {
        r["id"]
        for r in await db_pool.fetch("SELECT id::text FROM jobs WHERE owner_id = $1", key.id)
    }
    assert ids <= owned
    # The same Idempotency-Key under another API key is another job.
    other_key = await create_key(db_pool, "idem-2")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"X-API-Key": other_key.key}, timeout=20
    ) as client:
        theirs = await client.post(
            "/api/v1/jobs", data=_form(), files=await _file(media), headers=headers
        )
        assert theirs.json()["id"] != job_id


async def test_presigned_upload_then_json_submit(
    api: Served, db_pool: asyncpg.Pool, media: Media, store: ObjectStore
) -> None:
    key = await create_key(db_pool, "presigned")
    async with httpx.AsyncClient(
        base_url=api.url, headers={"X-API-Key": key.key}, timeout=20
    ) as client:
        reserved = await client.post("/api/v1/uploads", params={"filename": "big talk.mp4"})
        assert reserved.status_code == 201, reserved.text
        upload = reserved.json()
        async with httpx.AsyncClient() as plain:
            data = await asyncio.to_thread(Path(media.clip).read_bytes)
            sent = await plain.post(
                upload["url"], data=upload["fields"], files={"file": ("big talk.mp4", data)}
            )
            assert sent.status_code == 204, sent.text
        body = {"upload_id": upload["upload_id"], "target_languages": ["fra"]}
        created = await client.post("/api/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["id"] == upload["upload_id"]
        assert job["input"]["filename"] == "big talk.mp4"
        assert job["input"]["bytes"] == media.clip.stat().st_size
        # An upload is used once.
        reused = await client.post("/api/v1/jobs", json=body)
        assert reused.status_code == 404 and reused.json()["error"]["code"] == "upload_not_found"
        unknown = await client.post("/api/v1/jobs", json={**body, "colour": "red"})
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_field"

        # A bad file through the presigned path is refused and deleted.
        bad = (await client.post("/api/v1/uploads")).json()
        async with httpx.AsyncClient() as plain:
            playlist = b"#EXTM3U\nhttp://x/a.ts\n"
            await plain.post(bad["url"], data=bad["fields"], files={"file": ("a", playlist)})
        refused = await client.post(
            "/api/v1/jobs", json={"upload_id": bad["upload_id"], "target_languages": ["fra"]}
        )
        assert refused.status_code == 415
        assert refused.json()["error"]["code"] == "playlist_not_allowed"
        assert not await store.exists(f"inputs/{bad['upload_id']}/source")
        assert not await store.exists(f"uploads/{bad['upload_id']}/source")
        assert (
            await db_pool.fetchval(
                "SELECT count(*) FROM jobs WHERE id = $1", uuid.UUID(bad["upload_id"])
            )
            == 0
        )
        empty = (await client.post("/api/v1/uploads")).json()
        missing = await client.post(
            "/api/v1/jobs", json={"upload_id": empty["upload_id"], "target_languages": ["fra"]}
        )
        assert missing.status_code == 409 and missing.json()["error"]["code"] == "upload_missing"
    # Not the caller's upload: 404.
    async with httpx.AsyncClient(
        base_url=api.url, headers={"X-API-Key": (await create_key(db_pool, "x")).key}
    ) as other:
        stolen = await other.post(
            "/api/v1/jobs", json={"upload_id": empty["upload_id"], "target_languages": ["fra"]}
        )
        assert stolen.status_code == 404
    assert json.loads(json.dumps(job))["links"]["self"].endswith(job["id"])
