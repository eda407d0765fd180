"""A job whose languages wait for review, on the real API and PostgreSQL: its status 'review' is
written by the orchestrator's own store (no models needed), and the API treats it as waiting,
not finished: the event stream ends there, the job can be cancelled, it expires, and a late
worker cannot finish it."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import pytest

from polydub.api.db.quota import active_jobs
from polydub.api.db.retention import expired_jobs
from polydub.orchestrator.state import JobRecord, JobStore
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import Media
from tests.integration.api.test_lifecycle import submit

pytestmark = pytest.mark.integration

HOOK = "https://hooks.example.invalid/polydub"  # only the delivery rows are checked


async def _in_review(client: httpx.AsyncClient, pool: asyncpg.Pool, media: Media) -> JobRecord:
    """A submitted job taken by the orchestrator's store, its language left in review."""
    response = await submit(client, media.clip, targets="spa", extra={"review": "true"})
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    await pool.execute("UPDATE jobs SET callback_url = $2 WHERE id = $1", job_id, HOOK)
    store = JobStore(pool)
    job = await store.claim(job_id)
    assert job is not None
    await store.finish_target(job, "spa", "review")
    assert await store.await_review(job, ["spa"]) is not None
    return job


async def _deliveries(pool: asyncpg.Pool, job_id: uuid.UUID) -> set[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT state, language FROM webhook_deliveries WHERE job_id = $1", job_id
    )
    return {(r["state"], r["language"]) for r in rows}


async def test_a_job_in_review_waits_unfinished(
    clients: Clients, db_pool: asyncpg.Pool, media: Media
) -> None:
    job = await _in_review(clients.a, db_pool, media)
    shown = (await clients.a.get(f"/api/v1/jobs/{job.id}")).json()
    assert shown["status"] == "review" and shown["targets"][0]["status"] == "review"
    assert shown["finished_at"] is None
    assert await _deliveries(db_pool, job.id) == {("review", ""), ("review", "spa")}
    listed = await clients.a.get("/api/v1/jobs", params={"status": "review"})
    assert str(job.id) in [j["id"] for j in listed.json()["items"]]
    # No worker holds it: it counts against no quota, and a late finish changes nothing.
    before = await active_jobs(db_pool, clients.key_a.id)
    await db_pool.execute("UPDATE jobs SET status = 'running' WHERE id = $1", job.id)
    assert await active_jobs(db_pool, clients.key_a.id) == before + 1
    await db_pool.execute("UPDATE jobs SET status = 'review' WHERE id = $1", job.id)
    assert await JobStore(db_pool).finish_job(job, "succeeded") is None
    assert await JobStore(db_pool).claim(job.id) is None  # a redelivery finds nothing to do

    # The event stream ends where the job waits, its last state event saying so.
    async def states() -> list[dict[str, object]]:
        found = []
        async with clients.a.stream("GET", f"/api/v1/jobs/{job.id}/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line.removeprefix("data:"))
                    if event["type"] == "state":
                        found.append(event)
        return found

    events = await asyncio.wait_for(states(), 30)
    assert events[-1]["status"] == "review" and events[-1]["review"] == ["spa"]


async def test_a_job_in_review_is_cancelled_and_expires(
    clients: Clients, db_pool: asyncpg.Pool, media: Media
) -> None:
    job = await _in_review(clients.a, db_pool, media)
    assert (await clients.b.delete(f"/api/v1/jobs/{job.id}")).status_code == 404
    cancelled = await clients.a.delete(f"/api/v1/jobs/{job.id}")
    assert cancelled.status_code < 300, cancelled.text
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["targets"][0]["status"] == "cancelled"
    assert ("cancelled", "") in await _deliveries(db_pool, job.id)
    render = await clients.a.post(f"/api/v1/jobs/{job.id}/languages/spa/render")
    assert render.status_code == 409

    waiting = await _in_review(clients.a, db_pool, media)
    await db_pool.execute(
        "UPDATE jobs SET expires_at = now() - interval '1 second' WHERE id = $1", waiting.id
    )
    assert waiting.id in await expired_jobs(db_pool, 1000)  # a review nobody did expires too
