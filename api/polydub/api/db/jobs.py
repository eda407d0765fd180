"""The API's SQL for jobs and their events: what the routes and the job service read and change
in PostgreSQL (presigned upload reservations are db/uploads.py's, the keys' tables are
db/keys.py's and db/quota.py's, and the background loops' own tables are db/outbox.py's,
db/webhooks.py's and db/retention.py's).

Every query a caller reaches names the owner: a job of another key is indistinguishable from a
missing one.
A new or re-queued job, its targets, its first event and its queue message (the outbox row)
are written in one transaction, so an accepted job can never miss its message.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from polydub.api.db.outbox import enqueue
from polydub.api.errors import job_not_found
from polydub.api.ratelimit import check_job_quota
from polydub.errors import Conflict, InvalidInput
from polydub.jobs import JobMessage, JobStatus, record_event, record_webhook_delivery
from polydub.schemas import JobOptions
from polydub.settings import Settings

_JOB_COLUMNS = """
    j.id, j.owner_id, j.status, j.source_language, j.detected_language, j.options, j.input_key,
    j.input_filename, j.input_bytes, j.media, j.current_stage, j.progress, j.eta_seconds,
    j.error_code, j.error_message, j.attempt, j.cancel_requested, j.callback_url, j.retries,
    j.created_at, j.updated_at, j.started_at, j.finished_at, j.expires_at, j.warnings,
    j.idempotency_hash, j.name, j.metadata,
    COALESCE((SELECT json_agg(json_build_object(
                'language', t.language, 'status', t.status, 'stage', t.current_stage,
                'progress', t.progress, 'error_code', t.error_code,
                'error_message', t.error_message, 'warnings', t.warnings) ORDER BY t.language)
              FROM job_targets t WHERE t.job_id = j.id), '[]'::json) AS targets
"""


@dataclass(frozen=True)
class NewJob:
    id: uuid.UUID
    owner_id: uuid.UUID
    options: JobOptions
    input_key: str
    # Of the object that was probed: every worker read is conditional on it. None (with no
    # bytes and no media yet) for a job from a source_url, which the worker fetches and pins.
    input_etag: str | None
    input_filename: str | None
    input_bytes: int | None
    media: dict[str, Any] | None
    idempotency_key: str | None
    quota: int
    idempotency_hash: bytes | None = None  # the request's fingerprint (api/idempotency.py)


async def find_by_idempotency_key(
    pool: asyncpg.Pool, owner: uuid.UUID, key: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.owner_id = $1 AND j.idempotency_key = $2",
        owner,
        key,
    )
    return row


async def insert_job(
    pool: asyncpg.Pool, job: NewJob, settings: Settings
) -> tuple[asyncpg.Record, bool, dict[str, Any] | None]:
    """Create the job; returns (row, created, its first event). ``created`` is False when the
    Idempotency-Key was already used (a concurrent twin won): the caller drops its upload."""
    options = job.options
    async with pool.acquire() as conn, conn.transaction():
        await check_job_quota(conn, job.owner_id, job.quota, idempotency_key=job.idempotency_key)
        created_id = await conn.fetchval(
            """
            INSERT INTO jobs (id, owner_id, source_language, options, input_key, input_filename,
                              input_bytes, media, idempotency_key, callback_url, expires_at,
                              input_etag, idempotency_hash, name, metadata)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + $11::interval, $12, $13,
                    $14, $15)
            ON CONFLICT (owner_id, idempotency_key) DO NOTHING
            RETURNING id
            """,
            job.id,
            job.owner_id,
            None if options.source_language == "auto" else options.source_language,
            options.options_json(),
            job.input_key,
            job.input_filename,
            job.input_bytes,
            job.media,
            job.idempotency_key,
            str(options.callback_url) if options.callback_url else None,
            timedelta(seconds=settings.retention_seconds),
            job.input_etag,
            job.idempotency_hash if job.idempotency_key is not None else None,
            options.name,
            options.metadata,
        )
        if created_id is None:
            assert job.idempotency_key is not None
            existing = await conn.fetchrow(
                f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.owner_id = $1"
                " AND j.idempotency_key = $2",
                job.owner_id,
                job.idempotency_key,
            )
            return existing, False, None
        await conn.executemany(
            "INSERT INTO job_targets (job_id, language) VALUES ($1, $2)",
            [(job.id, lang) for lang in options.target_languages],
        )
        event = await record_event(conn, job.id, "state", {"status": JobStatus.QUEUED})
        await enqueue(conn, settings, JobMessage(job.id))
        row = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job.id)
    return row, True, event


async def get_job(pool: asyncpg.Pool, owner: uuid.UUID, job_id: uuid.UUID) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1 AND j.owner_id = $2", job_id, owner
    )
    if row is None:
        raise job_not_found(job_id)
    return row


async def assert_owned(pool: asyncpg.Pool, owner: uuid.UUID, job_id: uuid.UUID) -> str:
    status: str | None = await pool.fetchval(
        "SELECT status FROM jobs WHERE id = $1 AND owner_id = $2", job_id, owner
    )
    if status is None:
        raise job_not_found(job_id)
    return status


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("the cursor is not valid", code="invalid_cursor") from None


async def list_jobs(
    pool: asyncpg.Pool,
    owner: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[asyncpg.Record], str | None]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts."""
    after = decode_cursor(cursor) if cursor else None
    rows: list[asyncpg.Record] = await pool.fetch(
        f"""
        SELECT {_JOB_COLUMNS} FROM jobs j
         WHERE j.owner_id = $1
           AND ($2::text IS NULL OR j.status = $2)
           AND ($3::timestamptz IS NULL OR (j.created_at, j.id) < ($3, $4))
         ORDER BY j.created_at DESC, j.id DESC
         LIMIT $5
        """,
        owner,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
    return rows, next_cursor


async def cancel_job(
    pool: asyncpg.Pool, owner: uuid.UUID, job_id: uuid.UUID
) -> tuple[asyncpg.Record, dict[str, Any] | None]:
    """Queued, or waiting for review (no worker holds either): cancelled at once, with the
    languages not finished. Running: flagged, the worker stops at the next stage boundary.
    Cancelled: unchanged (DELETE is idempotent). Succeeded or failed: 409."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, callback_url FROM jobs WHERE id = $1 AND owner_id = $2 FOR UPDATE",
            job_id,
            owner,
        )
        if row is None:
            raise job_not_found(job_id)
        event = None
        if row["status"] in {JobStatus.SUCCEEDED, JobStatus.FAILED}:
            raise Conflict(
                f"the job has already {row['status']}; nothing to cancel",
                code="job_not_cancellable",
                detail={"status": row["status"]},
            )
        if row["status"] in {JobStatus.QUEUED, JobStatus.REVIEW}:
            await conn.execute(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true,"
                " finished_at = now(), eta_seconds = NULL, updated_at = now() WHERE id = $1",
                job_id,
            )
            await conn.execute(
                "UPDATE job_targets SET status = 'cancelled', updated_at = now()"
                " WHERE job_id = $1 AND status IN ('queued', 'running', 'review')",
                job_id,
            )
            await record_webhook_delivery(conn, job_id, JobStatus.CANCELLED, row["callback_url"])
            event = await record_event(conn, job_id, "state", {"status": JobStatus.CANCELLED})
        elif row["status"] == JobStatus.RUNNING:
            await conn.execute(
                "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
                job_id,
            )
        job = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job_id)
    return job, event


async def retry_job(
    pool: asyncpg.Pool, owner: uuid.UUID, job_id: uuid.UUID, settings: Settings, quota: int
) -> tuple[asyncpg.Record, dict[str, Any]]:
    """Failed or cancelled only: failed/cancelled targets go back to queued (succeeded ones are
    kept), and a new message ``<job>:retry:<n>`` goes through the outbox."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, retries FROM jobs WHERE id = $1 AND owner_id = $2 FOR UPDATE",
            job_id,
            owner,
        )
        if row is None:
            raise job_not_found(job_id)
        if row["status"] not in {JobStatus.FAILED, JobStatus.CANCELLED}:
            raise Conflict(
                f"only a failed or cancelled job can be retried; this one is {row['status']}",
                code="job_not_retryable",
                detail={"status": row["status"]},
            )
        await check_job_quota(conn, owner, quota)
        retry = row["retries"] + 1
        await conn.execute(
            """
            UPDATE jobs SET status = 'queued', retries = $2, cancel_requested = false,
                   error_code = NULL, error_message = NULL, current_stage = NULL, progress = 0,
                   eta_seconds = NULL, finished_at = NULL, updated_at = now(),
                   expires_at = GREATEST(expires_at, now() + $3::interval)
             WHERE id = $1
            """,
            job_id,
            retry,
            timedelta(seconds=settings.retention_seconds),
        )
        await conn.execute(
            """
            UPDATE job_targets SET status = 'queued', current_stage = NULL, progress = 0,
                   error_code = NULL, error_message = NULL, updated_at = now()
             WHERE job_id = $1 AND status IN ('failed', 'cancelled')
            """,
            job_id,
        )
        # Finished deliveries are history; the next terminal state is a new state change.
        await conn.execute(
            "DELETE FROM webhook_deliveries WHERE job_id = $1 AND status <> 'pending'", job_id
        )
        event = await record_event(
            conn, job_id, "state", {"status": JobStatus.QUEUED, "retry": retry}
        )
        await enqueue(conn, settings, JobMessage(job_id, retry))
        job = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job_id)
    return job, event


async def target_of(
    pool: asyncpg.Pool, owner: uuid.UUID, job_id: uuid.UUID, language: str
) -> asyncpg.Record | None:
    """The job's input name, the language's status and output version (None when the job has
    no such target);
    None when the caller does not own the job."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT j.input_filename, t.status, t.output_version FROM jobs j"
        " LEFT JOIN job_targets t ON t.job_id = j.id AND t.language = $3"
        " WHERE j.id = $1 AND j.owner_id = $2",
        job_id,
        owner,
        language,
    )
    return row


async def artifacts_of(
    pool: asyncpg.Pool, job_id: uuid.UUID, language: str
) -> list[asyncpg.Record]:
    """A language's artifacts and the job-wide ones (language ''), each kind's own first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT language, kind, object_key, content_type, size_bytes FROM artifacts"
        " WHERE job_id = $1 AND language IN ($2, '') ORDER BY kind, language DESC",
        job_id,
        language,
    )
    return rows


async def original_audio(pool: asyncpg.Pool, job_id: uuid.UUID) -> str | None:
    """The key of the job's audio as extract_audio decoded it (48 kHz WAV); None before then."""
    outputs = await pool.fetchval(
        "SELECT outputs FROM job_stages WHERE job_id = $1 AND stage = 'extract_audio'"
        " AND language = '' AND status = 'succeeded'",
        job_id,
    )
    audio = (outputs or {}).get("original48k")
    return str(audio) if audio else None


async def owner_key_active(pool: asyncpg.Pool, job_id: uuid.UUID) -> bool | None:
    """Whether the key that owns the job is still unrevoked; None once the job is purged."""
    active: bool | None = await pool.fetchval(
        "SELECT k.revoked_at IS NULL FROM jobs j JOIN api_keys k ON k.id = j.owner_id"
        " WHERE j.id = $1",
        job_id,
    )
    return active


async def job_for_webhook(pool: asyncpg.Pool, job_id: uuid.UUID) -> asyncpg.Record | None:
    """The job as a webhook reports it, with the owner key's signing secret."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {_JOB_COLUMNS}, k.webhook_secret FROM jobs j"
        " JOIN api_keys k ON k.id = j.owner_id WHERE j.id = $1",
        job_id,
    )
    return row


async def job_status(pool: asyncpg.Pool, job_id: uuid.UUID) -> str | None:
    """None once purged. For a follower that has already checked the owner."""
    status: str | None = await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status


async def events_after(
    pool: asyncpg.Pool, job_id: uuid.UUID, after: int, limit: int
) -> list[dict[str, Any]]:
    """The job's events after id ``after``, oldest first, as followers receive them."""
    rows = await pool.fetch(
        "SELECT id, type, data FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        job_id,
        after,
        limit,
    )
    return [{"id": r["id"], "type": r["type"], **(r["data"] or {})} for r in rows]
