"""Job name and metadata, account-level webhook endpoints, per-language webhook events, and
signatures an off-the-shelf Standard Webhooks verifier accepts, against the real stack. The
orchestrator's own state writer (``JobStore``) ends the languages and the job."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from polydub.api.auth import NewKey
from polydub.client import AsyncClient
from polydub.errors import InvalidInput
from polydub.orchestrator.state import JobStore
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media, Receiver, Served, wait_for

pytestmark = pytest.mark.integration

METADATA = {"customer": "c-42", "episode": 7, "tags": ["pilot", "ñandú"]}


async def _submit(client: httpx.AsyncClient, clip: Path, **data: str) -> httpx.Response:
    content = await asyncio.to_thread(clip.read_bytes)
    fields = {"target_languages": "spa,fra", "source_language": "eng", **data}
    return await client.post(
        "/api/v1/jobs", data=fields, files={"file": ("talk.mp4", content, "video/mp4")}
    )


@pytest.fixture
async def fresh(api: Served, fresh_key: NewKey) -> AsyncIterator[httpx.AsyncClient]:
    # A key of its own: no other test's job is delivered to its endpoints.
    async with httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {fresh_key.key}"}, timeout=20.0
    ) as client:
        yield client


async def test_name_and_metadata_are_stored_and_echoed(clients: Clients, media: Media) -> None:
    accepted = await _submit(clients.a, media.clip, name="Episode 7", metadata=json.dumps(METADATA))
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["name"] == "Episode 7" and job["metadata"] == METADATA
    read = (await clients.a.get(f"/api/v1/jobs/{job['id']}")).json()
    assert read["name"] == "Episode 7" and read["metadata"] == METADATA
    page = (await clients.a.get("/api/v1/jobs", params={"limit": 5})).json()
    listed = next(item for item in page["items"] if item["id"] == job["id"])
    assert listed["metadata"] == METADATA
    plain = (await _submit(clients.a, media.clip)).json()
    assert plain["name"] is None and plain["metadata"] == {}
    for job_id in (job["id"], plain["id"]):
        await clients.a.delete(f"/api/v1/jobs/{job_id}")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"metadata": json.dumps({"blob": "x" * 16_400})}, "metadata_too_large"),
        ({"metadata": "{not json"}, "invalid_metadata"),
        ({"metadata": "[1, 2]"}, "validation_error"),
        ({"name": "n" * 201}, "validation_error"),
    ],
)
async def test_bad_metadata_is_refused_naming_the_field(
    clients: Clients, media: Media, fields: dict[str, str], code: str
) -> None:
    refused = await _submit(clients.a, media.clip, **fields)
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == code
    assert error["detail"][0]["loc"][:2] == ["body", next(iter(fields))]


async def test_metadata_text_past_the_form_limit_is_413(clients: Clients, media: Media) -> None:
    refused = await _submit(clients.a, media.clip, metadata=json.dumps({"b": "x" * 40_000}))
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "payload_too_large"


async def test_webhook_endpoints_belong_to_their_key(
    clients: Clients, fresh: httpx.AsyncClient
) -> None:
    created = await fresh.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "description": "ops"}
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["url"] == "http://127.0.0.1:9/hook" and endpoint["description"] == "ops"
    again = await fresh.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "webhook_endpoint_exists"
    unknown = await fresh.post("/api/v1/webhooks", json={"url": "http://x.test/", "colour": 1})
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_field"
    assert [e["id"] for e in (await fresh.get("/api/v1/webhooks")).json()] == [endpoint["id"]]
    # Another key neither sees it nor removes it.
    assert endpoint["id"] not in [e["id"] for e in (await clients.b.get("/api/v1/webhooks")).json()]
    stranger = await clients.b.delete(f"/api/v1/webhooks/{endpoint['id']}")
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "webhook_not_found"
    assert (await fresh.delete(f"/api/v1/webhooks/{endpoint['id']}")).status_code == 204
    assert (await fresh.get("/api/v1/webhooks")).json() == []


async def test_language_events_partial_success_and_standard_signatures(
    fresh: httpx.AsyncClient, fresh_key: NewKey, media: Media, db_pool: asyncpg.Pool
) -> None:
    receiver = Receiver()
    hook = Served(receiver)
    await hook.start()
    try:
        created = await fresh.post("/api/v1/webhooks", json={"url": f"{hook.url}/account"})
        assert created.status_code == 201, created.text
        accepted = await _submit(
            fresh,
            media.clip,
            callback_url=f"{hook.url}/job",
            name="Episode 7",
            metadata=json.dumps(METADATA),
        )
        assert accepted.status_code == 202, accepted.text
        job_id = uuid.UUID(accepted.json()["id"])

        # The orchestrator's writer: spa succeeds, fra fails, the job succeeds with what it has.
        store = JobStore(db_pool)
        record = await store.claim(job_id)
        assert record is not None
        await store.finish_target(record, "spa", "succeeded")
        await store.finish_target(record, "fra", "failed", InvalidInput("no voice", code="x"))
        await store.finish_job(record, "succeeded")

        async def six() -> bool:
            return len(receiver.requests) >= 6

        await wait_for(six, within=20)
        await asyncio.sleep(0.5)  # nothing more comes
        assert len(receiver.requests) == 6
        verifier = Webhook(fresh_key.webhook_secret)
        seen: set[tuple[str, str | None]] = set()
        ids: set[str] = set()
        for request in receiver.requests:
            # What a receiver does with the package, unchanged: the signature checks out...
            payload: dict[str, Any] = verifier.verify(request.body, request.headers)
            assert request.headers["webhook-id"] == payload["id"]
            ids.add(payload["id"])
            seen.add((payload["type"], payload["language"]))
            assert payload["job"]["name"] == "Episode 7"
            assert payload["job"]["metadata"] == METADATA
            assert request.headers["polydub-event"] == payload["type"]
            # ...and it fails for a body that was changed on the way.
            with pytest.raises(WebhookVerificationError):
                verifier.verify(request.body.replace(b"Episode", b"Epizode"), request.headers)
        assert seen == {
            ("job.language.succeeded", "spa"),
            ("job.language.failed", "fra"),
            ("job.partially_succeeded", None),
        }
        assert len(ids) == 6  # one delivery per event and destination
        paths = sorted(request.path for request in receiver.requests)
        assert paths == ["/account"] * 3 + ["/job"] * 3
    finally:
        await hook.stop()


async def test_the_client_sends_name_and_metadata(
    api: Served, clients: Clients, media: Media
) -> None:
    async with AsyncClient(api.url, clients.key_a.key) as client:
        job = await client.create_job(
            media.clip, ["es"], source_language="en", name="Episode 7", metadata=METADATA
        )
        assert job.name == "Episode 7" and job.metadata == METADATA
        read = await client.get_job(job.id)
        assert read.name == "Episode 7" and read.metadata == METADATA
        await client.cancel_job(job.id)
