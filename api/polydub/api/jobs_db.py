"""The jobs as the API reads and changes them in PostgreSQL.

Every query names the owner: a job of another key is indistinguishable from a missing one.
A new or re-queued job, its targets, its first event and its queue message (the outbox row)
are written in one transaction, so an accepted job can never miss its message.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from polydub.api.errors import job_not_found
from polydub.api.ratelimit import check_job_quota
from polydub.api.schemas import TERMINAL, JobOptions
from polydub.errors import Conflict, InvalidInput
from polydub.settings import Settings
from polydub.telemetry.propagation import inject_headers

_JOB_COLUMNS = """
    j.id, j.owner_id, j.status, j.source_language, j.detected_language, j.options, j.input_key,
    j.input_filename, j.input_bytes, j.media, j.current_stage, j.progress, j.eta_seconds,
    j.error_code, j.error_message, j.attempt, j.cancel_requested, j.callback_url, j.retries,
    j.created_at, j.updated_at, j.started_at, j.finished_at, j.expires_at, j.warnings,
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
    input_filename: str | None
    input_bytes: int
    media: dict[str, Any]
    idempotency_key: str | None
    quota: int


def _api_base(settings: Settings) -> str:
    return settings.api_public_url.rstrip("/") + "/api/v1"


def job_json(row: asyncpg.Record | dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A jobs row (with its aggregated targets) as the JobOut shape."""
    base = f"{_api_base(settings)}/jobs/{row['id']}"
    targets = row["targets"]
    if isinstance(targets, str):
        targets = json.loads(targets)
    media = row["media"] or {}
    target_warnings = {t["language"]: _warnings(t.get("warnings"), t["language"]) for t in targets}
    error = None
    if row["error_code"] or row["error_message"]:
        error = {"code": row["error_code"] or "error", "message": row["error_message"] or ""}
    return {
        "id": row["id"],
        "status": row["status"],
        "stage": row["current_stage"],
        "progress": float(row["progress"]),
        "percent": round(float(row["progress"]) * 100),
        "eta_seconds": row["eta_seconds"],
        "source_language": row["source_language"] or "auto",
        "detected_language": row["detected_language"],
        "target_languages": [t["language"] for t in targets],
        "targets": [
            {
                "language": t["language"],
                "status": t["status"],
                "stage": t["stage"],
                "progress": float(t["progress"]),
                "error": (
                    {"code": t["error_code"] or "error", "message": t["error_message"] or ""}
                    if t["error_code"] or t["error_message"]
                    else None
                ),
                "warnings": target_warnings[t["language"]],
            }
            for t in targets
        ],
        "options": row["options"] or {},
        "input": {
            "filename": row["input_filename"],
            "bytes": row["input_bytes"],
            "duration_seconds": media.get("duration_seconds"),
            "has_video": media.get("has_video"),
        },
        "callback_url": row["callback_url"],
        "cancel_requested": row["cancel_requested"],
        "retries": row["retries"],
        "error": error,
        "warnings": [
            *_warnings(row.get("warnings"), None),
            *(w for t in targets for w in target_warnings[t["language"]]),
        ],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "expires_at": row["expires_at"],
        "links": {
            "self": base,
            "events": f"{base}/events",
            "progress": f"{base}/progress",
            "outputs": {t["language"]: f"{base}/outputs/{t['language']}" for t in targets},
        },
    }


def _warnings(stored: Any, language: str | None) -> list[dict[str, Any]]:
    """Quality-gate warnings as WarningInfo, named by language (None: the whole job's)."""
    if isinstance(stored, str):
        stored = json.loads(stored)
    return [{**w, "language": language} for w in stored or []]


def job_message(job_id: uuid.UUID, retry: int) -> tuple[str, dict[str, Any]]:
    """The outbox row's msg_id and payload: the job id alone on submit, ``:retry:<n>`` after."""
    msg_id = str(job_id) if retry == 0 else f"{job_id}:retry:{retry}"
    return msg_id, {"job_id": str(job_id), "attempt_hint": retry}


async def _event(conn: asyncpg.Connection, job_id: uuid.UUID, data: dict[str, Any]) -> int:
    event_id: int = await conn.fetchval(
        "INSERT INTO job_events (job_id, type, data) VALUES ($1, 'state', $2) RETURNING id",
        job_id,
        data,
    )
    return event_id


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
) -> tuple[asyncpg.Record, bool, int | None]:
    """Create the job; returns (row, created, event id). ``created`` is False when the
    Idempotency-Key was already used (a concurrent twin won): the caller drops its upload."""
    options = job.options
    async with pool.acquire() as conn, conn.transaction():
        await check_job_quota(conn, job.owner_id, job.quota, idempotency_key=job.idempotency_key)
        created_id = await conn.fetchval(
            """
            INSERT INTO jobs (id, owner_id, source_language, options, input_key, input_filename,
                              input_bytes, media, idempotency_key, callback_url, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + $11::interval)
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
        event_id = await _event(conn, job.id, {"status": "queued"})
        msg_id, payload = job_message(job.id, 0)
        await conn.execute(
            "INSERT INTO outbox (subject, msg_id, payload, headers) VALUES ($1, $2, $3, $4)",
            settings.jobs_subject,
            msg_id,
            payload,
            inject_headers(),  # the submitting span's trace context, for the worker to continue
        )
        row = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job.id)
    return row, True, event_id


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
) -> tuple[asyncpg.Record, int | None]:
    """Queued: cancelled at once. Running: flagged, the worker stops at the next stage
    boundary. Cancelled: unchanged (DELETE is idempotent). Succeeded or failed: 409."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, callback_url FROM jobs WHERE id = $1 AND owner_id = $2 FOR UPDATE",
            job_id,
            owner,
        )
        if row is None:
            raise job_not_found(job_id)
        event_id = None
        if row["status"] in {"succeeded", "failed"}:
            raise Conflict(
                f"the job has already {row['status']}; nothing to cancel",
                code="job_not_cancellable",
                detail={"status": row["status"]},
            )
        if row["status"] == "queued":
            await conn.execute(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true,"
                " finished_at = now(), eta_seconds = NULL, updated_at = now() WHERE id = $1",
                job_id,
            )
            await conn.execute(
                "UPDATE job_targets SET status = 'cancelled', updated_at = now()"
                " WHERE job_id = $1 AND status IN ('queued', 'running')",
                job_id,
            )
            if row["callback_url"]:
                await conn.execute(
                    "INSERT INTO webhook_deliveries (job_id, state, url) VALUES ($1, $2, $3)"
                    " ON CONFLICT (job_id, state) DO NOTHING",
                    job_id,
                    "cancelled",
                    row["callback_url"],
                )
            event_id = await _event(conn, job_id, {"status": "cancelled"})
        elif row["status"] == "running":
            await conn.execute(
                "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
                job_id,
            )
        job = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job_id)
    return job, event_id


async def retry_job(
    pool: asyncpg.Pool, owner: uuid.UUID, job_id: uuid.UUID, settings: Settings, quota: int
) -> tuple[asyncpg.Record, int]:
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
        if row["status"] not in {"failed", "cancelled"}:
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
        event_id = await _event(conn, job_id, {"status": "queued", "retry": retry})
        msg_id, payload = job_message(job_id, retry)
        await conn.execute(
            "INSERT INTO outbox (subject, msg_id, payload, headers) VALUES ($1, $2, $3, $4)",
            settings.jobs_subject,
            msg_id,
            payload,
            inject_headers(),  # the submitting span's trace context, for the worker to continue
        )
        job = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1", job_id)
    return job, event_id


def is_terminal(status: str | None) -> bool:
    return status in TERMINAL
