"""The reconciler against real PostgreSQL and NATS: a job stuck with no live queue message is
republished or failed with a reason exactly once, even with two reconcilers racing, and a job
whose message is still waiting for a worker is left alone.

Each test has a stream and subject of its own, and its jobs are backdated by two hours against
a stale period of one hour: the reconciler sees them and nothing else of the session.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from polydub.api.db import outbox as outbox_db
from polydub.api.db import reconcile as reconcile_db
from polydub.api.reconcile import Reconciler, ReconcileReport
from polydub.infra.queue import WORKER_CONSUMER, ConsumerPolicy, connect, ensure_jobs_stream
from polydub.jobs import JobMessage, JobStatus, record_event
from polydub.settings import Settings
from tests.factories import create_job, create_owner
from tests.integration.api.helpers import FakeWorker

pytestmark = pytest.mark.integration

MAX_DELIVER = 2
ACK_WAIT = 0.5


@dataclass(frozen=True)
class Queue:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    pool: asyncpg.Pool

    async def nats(self) -> NATS | None:
        return self.nc

    def reconciler(self) -> Reconciler:
        return Reconciler(self.pool, self.nats, self.settings)

    async def submit(self, callback_url: str | None = None) -> uuid.UUID:
        """A job and its outbox row, as the API writes them."""
        owner = await create_owner(self.pool)
        job_id = await create_job(self.pool, owner, ["spa"], callback_url=callback_url)
        async with self.pool.acquire() as conn, conn.transaction():
            await record_event(conn, job_id, "state", {"status": JobStatus.QUEUED})
            await outbox_db.enqueue(conn, self.settings, JobMessage(job_id))
        return job_id

    async def relay(self, job_id: uuid.UUID) -> list[str]:
        """Publish the job's pending outbox rows as the relay does (the API's own relay, when
        an earlier test started it, may publish some first); every message id of the job."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload FROM outbox WHERE published_at IS NULL"
                " AND payload->>'job_id' = $1 ORDER BY id FOR UPDATE SKIP LOCKED",
                str(job_id),
            )
            for row in rows:
                await self.js.publish(
                    row["subject"],
                    json.dumps(row["payload"]).encode(),
                    headers={"Nats-Msg-Id": row["msg_id"]},
                )
            await outbox_db.mark_published(conn, [r["id"] for r in rows])
        for _ in range(200):  # rows the other relay holds: published by it
            pending = await self.pool.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND payload->>'job_id' = $1",
                str(job_id),
            )
            if not pending:
                break
            await asyncio.sleep(0.05)
        ids = await self.pool.fetch(
            "SELECT msg_id FROM outbox WHERE payload->>'job_id' = $1 ORDER BY id", str(job_id)
        )
        return [r["msg_id"] for r in ids]

    async def messages(self) -> dict[str, uuid.UUID]:
        """Nats-Msg-Id -> job of every message in the stream."""
        found: dict[str, uuid.UUID] = {}
        state = (await self.js.stream_info(self.settings.jobs_stream)).state
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await self.js.get_msg(self.settings.jobs_stream, seq)
            except Exception:
                continue
            found[(msg.headers or {})["Nats-Msg-Id"]] = JobMessage.from_bytes(msg.data).job_id
        return found

    async def backdate(self, job_id: uuid.UUID) -> None:
        await self.pool.execute(
            "UPDATE jobs SET updated_at = now() - interval '2 hours' WHERE id = $1", job_id
        )

    async def race(self) -> list[ReconcileReport]:
        """Two reconcilers (two replicas) at once; the reports of those that ran."""
        one, two = self.reconciler(), self.reconciler()
        reports = await asyncio.gather(one.run_once(), two.run_once())
        return [r for r in reports if r is not None]


@pytest.fixture
async def queue(
    services: object, db_pool: asyncpg.Pool, stack_settings: Settings
) -> AsyncIterator[Queue]:
    stream = f"RECON_{uuid.uuid4().hex[:8]}"
    settings = stack_settings.model_copy(
        update={
            "jobs_stream": stream,
            "jobs_subject": f"{stream.lower()}.jobs",
            "reconcile_stale_seconds": 3600.0,
            "reconcile_max_republishes": 1,
        }
    )
    nc = await connect(settings, name="reconcile-tests")
    js = nc.jetstream()
    policy = ConsumerPolicy(ack_wait_seconds=ACK_WAIT, max_deliver=MAX_DELIVER)
    await ensure_jobs_stream(js, settings, policy)
    yield Queue(settings, nc, js, db_pool)
    # A row left pending would stall the API's relay (it stops at a subject with no stream).
    await db_pool.execute(
        "DELETE FROM outbox WHERE subject = $1 AND published_at IS NULL", settings.jobs_subject
    )
    await js.delete_stream(stream)
    await nc.close()


async def state_events(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[dict[str, object]]:
    rows = await pool.fetch(
        "SELECT data FROM job_events WHERE job_id = $1 AND type = 'state' ORDER BY id", job_id
    )
    return [dict(r["data"]) for r in rows]


async def test_a_job_with_no_message_left_is_republished_once(queue: Queue) -> None:
    pool = queue.pool
    job_id = await queue.submit()
    assert await queue.relay(job_id) == [str(job_id)]
    await FakeWorker(pool, queue.nc, queue.settings).claim(job_id)
    # The message is gone (acked by a worker that then lost the job, or lost with the stream).
    await queue.js.purge_stream(queue.settings.jobs_stream)
    await queue.backdate(job_id)

    reports = await queue.race()
    assert sum(r.republished for r in reports) == 1, reports
    again = await queue.reconciler().run_once()
    assert again is not None and again.republished == 0  # the job is fresh now

    job = await pool.fetchrow("SELECT status, attempt FROM jobs WHERE id = $1", job_id)
    assert (job["status"], job["attempt"]) == ("queued", 1)
    events = await state_events(pool, job_id)
    assert [e["status"] for e in events] == ["queued", "running", "queued"]
    assert events[-1]["reconciled"] == 1 and events[-1]["reason"] == "no live queue message"
    published = await queue.relay(job_id)
    assert len(published) == 2 and published[1].startswith(f"{job_id}:reconcile:1:")
    assert await queue.messages() == {published[1]: job_id}

    # A worker gets the republished message.
    sub = await queue.js.pull_subscribe_bind(WORKER_CONSUMER, stream=queue.settings.jobs_stream)
    [msg] = await sub.fetch(1, timeout=5)
    assert JobMessage.from_bytes(msg.data).job_id == job_id
    await msg.ack()
    await sub.unsubscribe()

    # The budget (max_republishes=1) spent, the next time it is stuck it fails with a reason.
    await FakeWorker(pool, queue.nc, queue.settings).claim(job_id)
    await queue.js.purge_stream(queue.settings.jobs_stream)
    await queue.backdate(job_id)
    assert sum(r.failed for r in await queue.race()) == 1
    row = await pool.fetchrow("SELECT status, error_code FROM jobs WHERE id = $1", job_id)
    assert (row["status"], row["error_code"]) == ("failed", "stuck_job")


async def test_a_job_past_max_deliver_whose_advisory_was_lost_fails_once(queue: Queue) -> None:
    pool = queue.pool
    job_id = await queue.submit(callback_url="http://127.0.0.1:9/hook")
    await queue.relay(job_id)
    worker = FakeWorker(pool, queue.nc, queue.settings)
    sub = await queue.js.pull_subscribe_bind(WORKER_CONSUMER, stream=queue.settings.jobs_stream)
    for _ in range(MAX_DELIVER):  # each delivery claims the job, and its worker dies (no ack)
        assert len(await sub.fetch(1, timeout=5)) == 1
        await worker.claim(job_id)
        await asyncio.sleep(ACK_WAIT + 0.2)
    with pytest.raises(asyncio.TimeoutError):  # JetStream gave up: no further delivery
        await sub.fetch(1, timeout=ACK_WAIT * 3)
    await sub.unsubscribe()
    assert list((await queue.messages()).values()) == [job_id]  # dead, still in the stream
    await queue.backdate(job_id)

    # Another replica is mid-pass: this one skips.
    async with pool.acquire() as conn:
        assert await reconcile_db.try_lock(conn)
        assert await queue.reconciler().run_once() is None
        await reconcile_db.release_lock(conn)

    reports = await queue.race()
    assert sum(r.failed for r in reports) == 1, reports
    assert (await queue.reconciler().run_once()) is not None

    job = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
    assert (job["status"], job["error_code"]) == ("failed", "worker_lost")
    assert "gave up after 2 deliveries" in job["error_message"]
    target = await pool.fetchrow(
        "SELECT status, error_code FROM job_targets WHERE job_id = $1", job_id
    )
    assert (target["status"], target["error_code"]) == ("failed", "worker_lost")
    statuses = [e["status"] for e in await state_events(pool, job_id)]
    assert statuses == ["queued", "running", "running", "failed"]
    hooks = await pool.fetch("SELECT state FROM webhook_deliveries WHERE job_id = $1", job_id)
    assert [h["state"] for h in hooks] == ["failed"]
    assert await queue.messages() == {}  # the dead message is deleted
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE payload->>'job_id' = $1", str(job_id)
        )
        == 1
    )  # nothing republished


async def test_jobs_waiting_for_a_worker_or_the_relay_are_left_alone(queue: Queue) -> None:
    pool = queue.pool
    cancelled = await queue.submit()  # cancel asked while running, then its worker vanished
    await queue.relay(cancelled)
    await FakeWorker(pool, queue.nc, queue.settings).claim(cancelled)
    await pool.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", cancelled)
    await queue.js.purge_stream(queue.settings.jobs_stream)
    waiting = await queue.submit()  # published, no worker has fetched it yet
    await queue.relay(waiting)
    # Still in the outbox (NATS was down, say); if the API's relay runs in this session it
    # publishes it meanwhile, and then it waits in the stream: left alone either way.
    unpublished = await queue.submit()
    for job_id in (waiting, unpublished, cancelled):
        await queue.backdate(job_id)

    report = await queue.reconciler().run_once()
    assert report is not None and report.waiting in (1, 2), report
    assert (report.republished, report.failed, report.cancelled, report.unknown) == (0, 0, 1, 0)
    rows = await pool.fetch(
        "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[])", [waiting, unpublished, cancelled]
    )
    statuses = {r["id"]: r["status"] for r in rows}
    assert statuses == {waiting: "queued", unpublished: "queued", cancelled: "cancelled"}
