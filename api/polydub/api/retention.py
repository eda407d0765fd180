"""Retention: a job's input and artifacts expire ``retention_seconds`` after it was created
(a retry extends that), and a purge deletes all of a job's data, objects first, then the rows.

Objects go before rows: if the purge is interrupted, the row is still there to find the objects
by next time. Only finished jobs are purged (a running job's expiry waits for it to end). The
same pass deletes expired upload reservations and sweeps the upload prefix: a presigned form
stays signed until it expires, so bytes may arrive after their reservation was used, refused
or purged; whatever there no reservation owns is deleted. The periodic pass runs in every API
replica, but under a PostgreSQL advisory lock, so one at a time.
The statements are ``polydub.api.db.retention``'s.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import asyncpg

from polydub.api.db import retention as retention_db
from polydub.api.db import uploads as uploads_db
from polydub.infra.db import session_lock
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.settings import Settings

log = logging.getLogger("polydub.api.retention")


async def _delete_all(store: ObjectStore, prefix: str) -> int:
    """Delete under prefix; returns the number of objects. Keys ending in "/" are the empty
    folders a filesystem-backed gateway (JuiceFS, MinIO in FS mode) lists: not data."""
    keys = await store.list_keys(prefix)
    if keys:
        await store.delete_prefix(prefix)
    return sum(1 for k in keys if not k.endswith("/"))


async def purge_job(pool: asyncpg.Pool, store: ObjectStore, job_id: uuid.UUID) -> int:
    """Delete every object of the job and its rows; returns how many objects were deleted."""
    keys = await retention_db.artifact_keys(pool, job_id)
    deleted = 0
    prefixes = JobKeys(job_id).prefixes
    for prefix in prefixes:
        deleted += await _delete_all(store, prefix)
    for key in keys:
        if not any(key.startswith(p) for p in prefixes):
            deleted += await _delete_all(store, key)
    await retention_db.delete_job_rows(pool, job_id)
    return deleted


async def sweep_orphan_uploads(pool: asyncpg.Pool, store: ObjectStore) -> int:
    """Delete what lies under the upload prefix with no reservation row; returns how many
    objects. Listed before the rows are read: an object can only exist after its row."""
    root = JobKeys.UPLOADS_ROOT
    owners: dict[str, uuid.UUID | None] = {}  # key -> the upload id its name says
    for key in await store.list_keys(root):
        name = key.removeprefix(root).split("/", 1)[0]
        if not name:
            continue  # the root's own folder entry (JuiceFS)
        try:
            owners[key] = uuid.UUID(name)
        except ValueError:
            owners[key] = None  # not a name the server signs: nothing owns it
    held = await retention_db.reserved_uploads(pool, list({i for i in owners.values() if i}))
    orphans = [key for key, owner in owners.items() if owner is None or owner not in held]
    await store.delete_keys(orphans)
    # The JuiceFS gateway lists emptied folders as "name/" keys: not data.
    return sum(1 for key in orphans if not key.endswith("/"))


@dataclass
class PurgeReport:
    jobs: int = 0
    objects: int = 0
    uploads: int = 0
    orphans: int = 0  # objects under the upload prefix that no reservation owned
    outbox_rows: int = 0


async def purge_expired(
    pool: asyncpg.Pool, store: ObjectStore, *, batch: int = 100
) -> PurgeReport | None:
    """One pass; None when another replica holds the purge lock."""
    report = PurgeReport()
    async with session_lock(
        pool, retention_db.try_purge_lock, retention_db.release_purge_lock
    ) as taken:
        if not taken:
            return None
        for job_id in await retention_db.expired_jobs(pool, batch):
            report.objects += await purge_job(pool, store, job_id)
            report.jobs += 1
        for row in await retention_db.expired_uploads(pool, batch):
            keys = JobKeys(row["id"])
            # An accept that died between copying and creating the job left an input.
            prefixes = [keys.upload_prefix] + ([] if row["has_job"] else [keys.input_prefix])
            for prefix in prefixes:
                report.objects += await _delete_all(store, prefix)
            await uploads_db.delete_upload(pool, row["id"])
            report.uploads += 1
        report.orphans = await sweep_orphan_uploads(pool, store)
        report.objects += report.orphans
        report.outbox_rows = await retention_db.delete_old_outbox_rows(pool)
    return report


async def run_retention(pool: asyncpg.Pool, store: ObjectStore, settings: Settings) -> None:
    while True:
        try:
            report = await purge_expired(pool, store)
            if report and (report.jobs or report.uploads or report.orphans):
                log.info("retention purge", extra=report.__dict__)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("retention pass failed", extra={"error": str(exc)})
        await asyncio.sleep(settings.retention_interval_seconds)
