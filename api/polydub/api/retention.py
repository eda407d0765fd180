"""Retention: a job's input and artifacts expire ``retention_seconds`` after it was created
(a retry extends that), and a purge deletes all of a job's data, objects first, then the rows.

Objects go before rows: if the purge is interrupted, the row is still there to find the objects
by next time. Only finished jobs are purged (a running job's expiry waits for it to end). The
periodic pass runs in every API replica, but under a PostgreSQL advisory lock, so one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg

from polydub.clients.storage import ObjectStore
from polydub.settings import Settings

log = logging.getLogger("polydub.api.retention")

_PURGE_LOCK = 0x706F6C7970757267  # "polypurg"


def job_prefixes(job_id: uuid.UUID) -> list[str]:
    return [f"inputs/{job_id}/", f"jobs/{job_id}/"]


async def _delete_all(store: ObjectStore, prefix: str) -> int:
    """Delete under prefix; returns the number of objects. Keys ending in "/" are the empty
    folders a filesystem-backed gateway (JuiceFS, MinIO in FS mode) lists: not data."""
    keys = await store.list_keys(prefix)
    if keys:
        await store.delete_prefix(prefix)
    return sum(1 for k in keys if not k.endswith("/"))


async def purge_job(pool: asyncpg.Pool, store: ObjectStore, job_id: uuid.UUID) -> int:
    """Delete every object of the job and its rows; returns how many objects were deleted."""
    keys = [
        r["object_key"]
        for r in await pool.fetch("SELECT object_key FROM artifacts WHERE job_id = $1", job_id)
    ]
    deleted = 0
    prefixes = job_prefixes(job_id)
    for prefix in prefixes:
        deleted += await _delete_all(store, prefix)
    for key in keys:
        if not any(key.startswith(p) for p in prefixes):
            deleted += await _delete_all(store, key)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM jobs WHERE id = $1", job_id)  # cascades to its rows
        await conn.execute(
            "DELETE FROM outbox WHERE published_at IS NOT NULL"
            " AND (msg_id = $1 OR msg_id LIKE $1 || ':%')",
            str(job_id),
        )
    return deleted


@dataclass
class PurgeReport:
    jobs: int = 0
    objects: int = 0
    uploads: int = 0
    outbox_rows: int = 0


async def purge_expired(
    pool: asyncpg.Pool, store: ObjectStore, *, batch: int = 100
) -> PurgeReport | None:
    """One pass; None when another replica holds the purge lock."""
    report = PurgeReport()
    async with pool.acquire() as lock_conn:
        if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", _PURGE_LOCK):
            return None
        try:
            expired = await pool.fetch(
                "SELECT id FROM jobs WHERE expires_at < now()"
                " AND status IN ('succeeded', 'failed', 'cancelled')"
                " ORDER BY expires_at LIMIT $1",
                batch,
            )
            for row in expired:
                report.objects += await purge_job(pool, store, row["id"])
                report.jobs += 1
            uploads = await pool.fetch(
                "SELECT id, object_key FROM uploads WHERE expires_at < now() LIMIT $1", batch
            )
            for row in uploads:
                report.objects += await _delete_all(store, row["object_key"])
                await pool.execute("DELETE FROM uploads WHERE id = $1", row["id"])
                report.uploads += 1
            status = await pool.execute(
                "DELETE FROM outbox WHERE published_at < now() - interval '1 day'"
            )
            report.outbox_rows = int(status.split()[-1])
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", _PURGE_LOCK)
    return report


async def run_retention(pool: asyncpg.Pool, store: ObjectStore, settings: Settings) -> None:
    while True:
        try:
            report = await purge_expired(pool, store)
            if report and (report.jobs or report.uploads):
                log.info("retention purge", extra=report.__dict__)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("retention pass failed", extra={"error": str(exc)})
        await asyncio.sleep(settings.retention_interval_seconds)
