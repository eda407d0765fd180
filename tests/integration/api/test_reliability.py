"""The outbox through a NATS restart, webhook retries, readiness, languages, retention."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from nats.aio.client import Client as NATS

from polydub.api.app import create_app
from polydub.api.retention import purge_expired
from polydub.api.webhooks import SIGNATURE_HEADER, verify
from polydub.infra.storage import ObjectStore
from polydub.settings import Settings
from polydub.stack import Stack
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import FakeWorker, Media, Receiver, Served, free_port, wait_for

pytestmark = pytest.mark.integration


async def _submit(client: httpx.AsyncClient, media: Media, **extra: str) -> dict[str, object]:
    wav = await asyncio.to_thread(Path(media.wav).read_bytes)
    response = await client.post(
        "/api/v1/jobs",
        data={"target_languages": "spa", **extra},
        files={"file": ("a.wav", wav, "audio/wav")},
    )
    assert response.status_code == 202, response.text
    body: dict[str, object] = response.json()
    return body


async def _messages_with_id(nc: NATS, settings: Settings, msg_id: str) -> int:
    js = nc.jetstream()
    info = await js.stream_info(settings.jobs_stream)
    found = 0
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(settings.jobs_stream, seq)
        except Exception:
            continue
        if (msg.headers or {}).get("Nats-Msg-Id") == msg_id:
            found += 1
    return found


async def test_outbox_keeps_jobs_through_a_nats_restart(
    services: Stack,
    clients: Clients,
    media: Media,
    db_pool: asyncpg.Pool,
    nc: NATS,
    api_settings: Settings,
) -> None:
    nats_server = next(s for s in services.servers if s.name == "nats")
    services.process(nats_server).stop()
    try:
        # NATS is down: jobs are still accepted, their messages wait in the outbox.
        job = await _submit(clients.a, media)
        job_id = str(job["id"])
        await asyncio.sleep(1.0)  # several relay passes fail meanwhile
        row = await db_pool.fetchrow(
            "SELECT published_at, attempts, last_error FROM outbox WHERE msg_id = $1", job_id
        )
        assert row["published_at"] is None
        ready = await clients.a.get("/health/ready")
        assert ready.status_code == 503
        checks = ready.json()["error"]["detail"]["checks"]
        assert checks["nats"]["ok"] is False and checks["postgres"]["ok"] is True
        assert (await clients.a.get("/health/live")).status_code == 200
    finally:
        services.up()
    await wait_for(
        lambda: db_pool.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE msg_id = $1", job_id
        ),
        within=20,
    )
    await wait_for(lambda: _nc_connected(nc), within=30)
    # Exactly one message for the job in the stream, whatever was retried meanwhile.
    assert await _messages_with_id(nc, api_settings, job_id) == 1
    await wait_for(_ready(clients.a), within=30)


async def test_a_row_no_stream_takes_never_holds_back_the_rows_behind_it(
    clients: Clients, media: Media, db_pool: asyncpg.Pool
) -> None:
    poison = f"poison-{uuid.uuid4()}"
    await db_pool.execute(
        "INSERT INTO outbox (subject, msg_id, payload, headers) VALUES ($1, $2, $3, $4)",
        "nowhere.polydub.jobs",  # no stream takes this subject: JetStream has no responder
        poison,
        {"job_id": str(uuid.uuid4())},
        {},
    )
    try:
        job = await _submit(clients.a, media)
        await wait_for(
            lambda: db_pool.fetchval(
                "SELECT published_at IS NOT NULL FROM outbox WHERE msg_id = $1", str(job["id"])
            ),
            within=20,
        )
        row = await db_pool.fetchrow(
            "SELECT published_at, attempts, last_error FROM outbox WHERE msg_id = $1", poison
        )
        assert row["published_at"] is None and row["attempts"] >= 1
        assert row["last_error"].startswith(("NoResponders", "NoStreamResponse"))
    finally:
        await db_pool.execute("DELETE FROM outbox WHERE msg_id = $1", poison)


async def _nc_connected(nc: NATS) -> bool:
    return nc.is_connected


def _ready(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await client.get("/health/ready")).status_code == 200

    return check


async def test_health_and_languages_from_the_model_repository(
    clients: Clients, anon: httpx.AsyncClient
) -> None:
    ready = await anon.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"postgres", "nats", "s3", "triton"}
    assert all(c["ok"] for c in ready.json()["checks"].values())

    languages = await clients.a.get("/api/v1/languages")
    assert languages.status_code == 200
    body = languages.json()
    assert body["auto_detect"] is True
    assert body["models"] == ["mms_tts_fra", "mms_tts_spa", "nllb", "whisper"]
    assert body["served"] == [
        {
            "name": "nllb",
            "family": "nllb",
            "checkpoint": "random weights (tiny)",
            "revision": None,
            "license": "CC-BY-NC-4.0",
            "precision": "fp32",
            "random_weights": True,
        },
        {
            "name": "whisper",
            "family": "whisper",
            "checkpoint": "openai/whisper-base",
            "revision": "abc123",
            "license": "MIT",
            "precision": "int8",
            "random_weights": False,
        },
    ]
    assert body["random_weights"] == ["nllb"]
    by_code = {lang["code"]: lang for lang in body["languages"]}
    assert by_code["spa"] == {
        "code": "spa",
        "name": "Spanish",
        "transcribe": True,
        "translate": True,
        "synthesize": True,
        "dub_target": True,
    }
    assert by_code["eng"]["synthesize"] is False and by_code["eng"]["transcribe"] is True
    assert sorted(c for c, lang in by_code.items() if lang["dub_target"]) == ["fra", "spa"]


async def test_ready_reports_a_missing_triton(
    api_settings: Settings, db_pool: asyncpg.Pool
) -> None:
    settings = api_settings.model_copy(
        update={"triton_url": f"127.0.0.1:{free_port()}", "api_run_workers": False}
    )
    served = Served(create_app(settings))
    await served.start()
    try:
        async with httpx.AsyncClient(base_url=served.url) as client:
            ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "5"
        error = ready.json()["error"]
        assert error["code"] == "not_ready" and error["message"] == "not ready: triton"
        checks = error["detail"]["checks"]
        assert {name: c["ok"] for name, c in checks.items()} == {
            "postgres": True,
            "nats": True,
            "s3": True,
            "triton": False,
        }
    finally:
        await served.stop()


async def test_webhook_is_signed_retried_with_backoff_and_sent_once(
    clients: Clients, media: Media, worker: FakeWorker, db_pool: asyncpg.Pool
) -> None:
    receiver = Receiver(statuses=[500, 503])
    hook = Served(receiver)
    await hook.start()
    try:
        job = await _submit(clients.a, media, callback_url=f"{hook.url}/cb")
        job_id = uuid.UUID(str(job["id"]))
        await worker.claim(job_id)
        await worker.finish_job(job_id, "failed", {"code": "asr_failed", "message": "no speech"})
        await wait_for(
            lambda: db_pool.fetchval(
                "SELECT status = 'delivered' FROM webhook_deliveries WHERE job_id = $1", job_id
            ),
            within=45,
        )
        await asyncio.sleep(0.6)  # a delivered state is not sent again
        assert len(receiver.requests) == 3
        delivery = await db_pool.fetchrow(
            "SELECT attempts, state FROM webhook_deliveries WHERE job_id = $1", job_id
        )
        assert delivery["attempts"] == 3 and delivery["state"] == "failed"
        for request in receiver.requests:
            assert verify(
                clients.key_a.webhook_secret,
                request.headers[SIGNATURE_HEADER.lower()],
                request.body,
            )
            assert json.loads(request.body)["job"]["error"]["code"] == "asr_failed"
        assert [r.headers["polydub-attempt"] for r in receiver.requests] == ["1", "2", "3"]
        assert len({r.headers["polydub-delivery"] for r in receiver.requests}) == 1

        # A retry that fails again is a new state change: delivered again, once.
        await clients.a.post(f"/api/v1/jobs/{job_id}/retry")
        await worker.claim(job_id)
        await worker.finish_job(job_id, "failed", {"code": "asr_failed", "message": "again"})
        await wait_for(lambda: _count(receiver, 4), within=30)
        await asyncio.sleep(0.4)
        assert len(receiver.requests) == 4
        assert json.loads(receiver.requests[-1].body)["job"]["error"]["message"] == "again"
    finally:
        await hook.stop()


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


async def test_retention_and_purge(
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    db_pool: asyncpg.Pool,
    store: ObjectStore,
) -> None:
    expired = await _submit(clients.a, media)
    kept = await _submit(clients.a, media)
    active = await _submit(clients.a, media)
    for job in (expired, kept):
        job_id = uuid.UUID(str(job["id"]))
        await worker.claim(job_id)
        await worker.finish_target(
            job_id, "spa", "succeeded", store, {"subtitles_srt": (b"1\n", "application/x-subrip")}
        )
        await worker.finish_job(job_id, "succeeded")
    for job in (expired, active):
        await db_pool.execute(
            "UPDATE jobs SET expires_at = now() - interval '1 minute' WHERE id = $1",
            uuid.UUID(str(job["id"])),
        )
    report = await purge_expired(db_pool, store)
    assert report is not None and report.jobs >= 1
    assert (await clients.a.get(f"/api/v1/jobs/{expired['id']}")).status_code == 404
    assert await objects(store, f"inputs/{expired['id']}/") == []
    assert await objects(store, f"jobs/{expired['id']}/") == []
    # A job past its expiry but still queued waits for its end.
    assert (await clients.a.get(f"/api/v1/jobs/{active['id']}")).status_code == 200

    # Purge on request: refused while active, then everything goes.
    refused = await clients.a.delete(f"/api/v1/jobs/{active['id']}/data")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_active"
    purged = await clients.a.delete(f"/api/v1/jobs/{kept['id']}/data")
    assert purged.status_code == 200
    assert purged.json() == {"job_id": kept["id"], "deleted_objects": 2}
    assert (await clients.a.get(f"/api/v1/jobs/{kept['id']}")).status_code == 404
    assert await objects(store, f"jobs/{kept['id']}/") == []
    assert await objects(store, f"inputs/{kept['id']}/") == []


async def objects(store: ObjectStore, prefix: str) -> list[str]:
    # The JuiceFS gateway lists emptied folders as "name/" keys; those hold no data.
    return [k for k in await store.list_keys(prefix) if not k.endswith("/")]
