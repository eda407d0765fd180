"""The purge's SQL: which jobs and uploads have expired, a job's artifact keys, and deleting a
job's rows. ``polydub.api.retention`` deletes the objects first and decides what to purge.
"""

from __future__ import annotations

import uuid

import asyncpg

# One purge pass at a time across every replica: a session-level advisory lock on this key.
_PURGE_LOCK = 0x706F6C7970757267  # "polypurg"


async def try_purge_lock(conn: asyncpg.Connection) -> bool:
    """Take the purge lock on this connection; False when another replica holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _PURGE_LOCK))


async def release_purge_lock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", _PURGE_LOCK)


async def artifact_keys(pool: asyncpg.Pool, job_id: uuid.UUID) -> list[str]:
    return [
        r["object_key"]
        for r in await pool.fetch("SELECT object_key FROM artifacts WHERE job_id = $1", job_id)
    ]


async def delete_job_rows(pool: asyncpg.Pool, job_id: uuid.UUID) -> None:
    """The job's rows (its targets, stages, events, artifacts and deliveries go by cascade) and
    its queue messages already published, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM jobs WHERE id = $1", job_id)  # cascades to its rows
        await conn.execute(
            "DELETE FROM outbox WHERE published_at IS NOT NULL"
            " AND (msg_id = $1 OR msg_id LIKE $1 || ':%')",
            str(job_id),
        )


async def expired_jobs(pool: asyncpg.Pool, batch: int) -> list[uuid.UUID]:
    """Jobs past their expiry that no worker holds (finished, or waiting for a review nobody
    did), the longest expired first (a running job waits)."""
    rows = await pool.fetch(
        "SELECT id FROM jobs WHERE expires_at < now()"
        " AND status IN ('succeeded', 'failed', 'cancelled', 'review')"
        " ORDER BY expires_at LIMIT $1",
        batch,
    )
    return [r["id"] for r in rows]


async def expired_uploads(pool: asyncpg.Pool, batch: int) -> list[asyncpg.Record]:
    """Presigned uploads never turned into a job (id, object_key, has_job: whether a job took
    the id after all, so its input is not the upload's to delete). One claimed by a POST /jobs
    waits an hour: that request may still be copying and probing it."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT u.id, u.object_key, EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.id) AS has_job"
        " FROM uploads u WHERE u.expires_at < now()"
        " AND (u.consumed_at IS NULL OR u.consumed_at < now() - interval '1 hour') LIMIT $1",
        batch,
    )
    return rows


async def reserved_uploads(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these upload ids still have a reservation row (open, claimed or expiring)."""
    rows = await pool.fetch("SELECT id FROM uploads WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


async def delete_old_outbox_rows(pool: asyncpg.Pool) -> int:
    """Published queue messages older than a day; returns how many were deleted."""
    status: str = await pool.execute(
        "DELETE FROM outbox WHERE published_at < now() - interval '1 day'"
    )
    return int(status.split()[-1])
