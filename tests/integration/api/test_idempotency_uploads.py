"""An Idempotency-Key on a job from a presigned upload: a retry that reserved and filled a new
upload gets the first job back only when it uploaded the same bytes (the upload's size and
ETag are part of the request, its id is not), and jobs fingerprinted by the older formula (the
upload id, no content) still replay for that upload id."""

from __future__ import annotations

import asyncio
import typing
import uuid

import asyncpg
import httpx
import pytest

from polydub.api.auth import NewKey
from polydub.api.idempotency import legacy_upload_hash
from polydub.schemas import JobFromUpload
from tests.integration.api.helpers import Media, Served

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(api: Served, fresh_key: NewKey) -> typing.AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {fresh_key.key}"}, timeout=20
    ) as keyed:
        yield keyed


async def _upload(client: httpx.AsyncClient, data: bytes) -> str:
    reserved = (await client.post("/api/v1/uploads")).json()
    async with httpx.AsyncClient() as plain:
        sent = await plain.post(
            reserved["url"], data=reserved["fields"], files={"file": ("a.wav", data)}
        )
        assert sent.status_code == 204, sent.text
    return str(reserved["upload_id"])


async def test_a_retried_upload_replays_only_with_the_same_content(
    client: httpx.AsyncClient, media: Media
) -> None:
    clip = await asyncio.to_thread(media.clip.read_bytes)
    headers = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    first_upload = await _upload(client, clip)
    body = {"upload_id": first_upload, "target_languages": ["fra"]}
    created = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert job_id == first_upload

    async def repeat(upload_id: str) -> httpx.Response:
        return await client.post(
            "/api/v1/jobs", json={**body, "upload_id": upload_id}, headers=headers
        )

    # the very same request (its upload is the job's own now): judged by what the job recorded
    same = await repeat(first_upload)
    assert same.status_code == 202 and same.json()["id"] == job_id, same.text
    assert same.headers["Idempotent-Replayed"] == "true"
    # a retry of the whole submission with the same bytes in a new upload: a replay
    retried = await repeat(await _upload(client, clip))
    assert retried.status_code == 202 and retried.json()["id"] == job_id, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    # other bytes in a new upload (one byte more, or the same length changed): never the job
    changed = bytearray(clip)
    changed[-1] ^= 0xFF
    for other in (clip + b"\0", bytes(changed)):
        refused = await repeat(await _upload(client, other))
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "idempotency_mismatch" and error["detail"]["job_id"] == job_id
    # an upload id that names nothing is no replay either
    missing = await repeat(str(uuid.uuid4()))
    assert missing.status_code == 422
    assert missing.json()["error"]["code"] == "idempotency_mismatch"
    listed = (await client.get("/api/v1/jobs")).json()["items"]
    assert [j["id"] for j in listed] == [job_id]


async def test_a_job_fingerprinted_by_the_older_formula_still_replays(
    client: httpx.AsyncClient, media: Media, db_pool: asyncpg.Pool
) -> None:
    clip = await asyncio.to_thread(media.clip.read_bytes)
    headers = {"Idempotency-Key": f"idem-{uuid.uuid4()}"}
    body = {"upload_id": await _upload(client, clip), "target_languages": ["fra"]}
    created = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    # as a row written before content identities: the options with the upload id
    legacy = legacy_upload_hash(JobFromUpload.model_validate(body))
    await db_pool.execute(
        "UPDATE jobs SET idempotency_hash = $1 WHERE id = $2", legacy, uuid.UUID(job_id)
    )
    same = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert same.status_code == 202 and same.json()["id"] == job_id, same.text
    assert same.headers["Idempotent-Replayed"] == "true"
    # other options under the old fingerprint: still a mismatch
    other = await client.post(
        "/api/v1/jobs", json={**body, "target_languages": ["spa"]}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_mismatch"
