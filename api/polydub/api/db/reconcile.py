"""The reconciler's SQL: which jobs look stuck, and the two ways out of it (republish through the
outbox, or a terminal state with a reason), each a compare-and-set on the row the candidate was
read from, so a worker claiming the job meanwhile, or another reconciler, always wins over a
second change. ``polydub.api.reconcile`` decides which way and owns the queue look-ups.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from polydub.api.db.outbox import enqueue
from polydub.errors import PolydubError
from polydub.jobs import JobMessage, JobStatus, record_event, record_webhook_delivery
from polydub.settings import Settings

# One reconciler pass at a time across every replica: a session-level advisory lock on this key.
_RECONCILE_LOCK = 0x706F6C797265636E  # "polyrecn"


@dataclass(frozen=True)
class Candidate:
    """A job queued or running with no change for the stale period, as read (the CAS guard)."""

    id: uuid.UUID
    status: str
    attempt: int
    updated_at: datetime
    retries: int
    cancel_requested: bool
    claims: int  # deliveries that claimed it since it was last (re)queued
    reconciled: int  # times a reconciler already republished it


async def try_lock(conn: asyncpg.Connection) -> bool:
    """Take the reconcile lock on this connection; False when another replica holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RECONCILE_LOCK))


async def release_lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", _RECONCILE_LOCK)


async def stale_jobs(
    pool: asyncpg.Pool, subject: str, stale_seconds: float, batch: int
) -> list[Candidate]:
    """Jobs of this queue subject (an outbox row of theirs names it) queued or running with no
    change for ``stale_seconds``, oldest first; a job whose message still waits in the outbox is
    the relay's, not stuck."""
    rows = await pool.fetch(
        """
        SELECT j.id, j.status, j.attempt, j.updated_at, j.retries, j.cancel_requested,
               (SELECT count(*) FROM job_events e
                 WHERE e.job_id = j.id AND e.type = 'state' AND e.data->>'status' = 'running'
                   AND e.id > COALESCE((SELECT max(q.id) FROM job_events q
                                         WHERE q.job_id = j.id AND q.type = 'state'
                                           AND q.data->>'status' = 'queued'), 0)) AS claims,
               (SELECT count(*) FROM job_events e
                 WHERE e.job_id = j.id AND e.type = 'state' AND e.data ? 'reconciled')
                 AS reconciled
          FROM jobs j
         WHERE j.status IN ('queued', 'running')
           AND j.updated_at < now() - make_interval(secs => $2)
           AND EXISTS (SELECT 1 FROM outbox o
                        WHERE o.payload->>'job_id' = j.id::text AND o.subject = $1)
           AND NOT EXISTS (SELECT 1 FROM outbox o
                            WHERE o.published_at IS NULL AND o.payload->>'job_id' = j.id::text)
         ORDER BY j.updated_at
         LIMIT $3
        """,
        subject,
        stale_seconds,
        batch,
    )
    return [Candidate(**dict(r)) for r in rows]


_GUARD = "id = $1 AND status = $2 AND attempt = $3 AND updated_at = $4"


def _guard(job: Candidate) -> tuple[Any, ...]:
    return (job.id, job.status, job.attempt, job.updated_at)


async def republish(
    pool: asyncpg.Pool, settings: Settings, job: Candidate, reason: str
) -> dict[str, Any] | None:
    """Back to queued with a fresh queue message (``<job>:reconcile:<n>:<nonce>``, which the
    stream's duplicate window cannot drop) in one transaction; None if the job changed since
    it was read (claimed, finished, or reconciled by someone else)."""
    async with pool.acquire() as conn, conn.transaction():
        changed = await conn.fetchval(
            "UPDATE jobs SET status = 'queued', current_stage = NULL, eta_seconds = NULL,"
            f" updated_at = now() WHERE {_GUARD} RETURNING id",
            *_guard(job),
        )
        if changed is None:
            return None
        count = job.reconciled + 1
        event = await record_event(
            conn,
            job.id,
            "state",
            {"status": JobStatus.QUEUED, "reconciled": count, "reason": reason},
        )
        msg_id = f"{job.id}:reconcile:{count}:{uuid.uuid4().hex[:8]}"
        await enqueue(conn, settings, JobMessage(job.id, job.retries), msg_id=msg_id)
    return event


async def finish(
    pool: asyncpg.Pool, job: Candidate, status: JobStatus, error: PolydubError | None
) -> dict[str, Any] | None:
    """The terminal state (failed with the reason, or cancelled), its targets and its webhook,
    as the worker's ``finish_job`` writes them; None if the job changed since it was read."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE jobs SET status = $5, error_code = $6, error_message = $7,"
            " finished_at = now(), current_stage = NULL, eta_seconds = NULL, updated_at = now()"
            f" WHERE {_GUARD} RETURNING callback_url",
            *_guard(job),
            status,
            error.code if error else None,
            error.message if error else None,
        )
        if row is None:
            return None
        await conn.execute(
            """
            UPDATE job_targets SET status = $2, error_code = COALESCE(error_code, $3),
                   error_message = COALESCE(error_message, $4), current_stage = NULL,
                   updated_at = now()
             WHERE job_id = $1 AND (status IN ('queued', 'running')
                                    OR (status = 'review' AND $2 = 'cancelled'))
            """,
            job.id,
            "cancelled" if status == JobStatus.CANCELLED else "failed",
            error.code if error else None,
            error.message if error else None,
        )
        await record_webhook_delivery(conn, job.id, status, row["callback_url"])
        data: dict[str, Any] = {"status": status, "by": "reconciler"}
        if error:
            data["error"] = error.to_dict()
        return await record_event(conn, job.id, "state", data)
