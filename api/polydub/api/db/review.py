"""Review and re-dub's SQL: a language's stage records and edits, and the render that re-queues
the language (service: polydub.api.review_service)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from polydub.api.db.outbox import enqueue
from polydub.api.errors import job_not_found
from polydub.api.ratelimit import check_job_quota
from polydub.errors import Conflict, NotFound
from polydub.jobs import JobMessage, JobStatus, record_event
from polydub.settings import Settings

# The stages a render runs again, in the language's order; the others' outputs are kept.
# assign_voices too: it writes a speaker's chosen voice into voices.json (cheap, no model call).
RENDER_STAGES = ("translate", "assign_voices", "synthesize", "mix", "mux", "subtitles")
# The record a render leaves for the worker: the edited state, and what it starts from.
REVIEW_STAGE = "review"


@dataclass(frozen=True)
class LanguageRecord:
    """What the segments of one of the owner's job languages are read from."""

    job_status: str
    status: str
    output_version: int
    attempt: int
    stages: dict[str, dict[str, Any]]  # stage -> outputs (this language's and the job's)
    metrics: dict[str, dict[str, Any]]  # stage -> metrics
    edits: dict[str, Any] | None  # the edited state waiting for a render


async def language_record(
    conn: asyncpg.Connection | asyncpg.Pool,
    owner: uuid.UUID,
    job_id: uuid.UUID,
    language: str,
    *,
    lock: bool = False,
) -> LanguageRecord:
    """404 for a job the caller does not own or a language it does not have. ``lock`` (in a
    transaction) holds the job's row, so edits and renders of it go one at a time."""
    row = await conn.fetchrow(
        "SELECT j.status AS job_status, j.attempt, t.status, t.output_version"
        " FROM jobs j LEFT JOIN job_targets t ON t.job_id = j.id AND t.language = $3"
        " WHERE j.id = $1 AND j.owner_id = $2" + (" FOR UPDATE OF j" if lock else ""),
        job_id,
        owner,
        language,
    )
    if row is None:
        raise job_not_found(job_id)
    if row["status"] is None:
        raise NotFound(f"the job has no target language {language!r}", code="language_not_in_job")
    stages = await conn.fetch(
        "SELECT stage, outputs, metrics FROM job_stages WHERE job_id = $1 AND status = 'succeeded'"
        " AND language IN ('', $2) ORDER BY language",  # the language's own record last: it wins
        job_id,
        language,
    )
    edits = await conn.fetchval(
        "SELECT segments FROM segment_edits WHERE job_id = $1 AND language = $2", job_id, language
    )
    return LanguageRecord(
        job_status=row["job_status"],
        status=row["status"],
        output_version=row["output_version"],
        attempt=row["attempt"],
        stages={r["stage"]: r["outputs"] for r in stages},
        metrics={r["stage"]: r["metrics"] for r in stages},
        edits=edits,
    )


async def save_edits(
    conn: asyncpg.Connection, job_id: uuid.UUID, language: str, state: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO segment_edits (job_id, language, segments) VALUES ($1, $2, $3)"
        " ON CONFLICT (job_id, language) DO UPDATE SET segments = EXCLUDED.segments,"
        " updated_at = now()",
        job_id,
        language,
        state,
    )


async def start_render(
    conn: asyncpg.Connection,
    settings: Settings,
    owner: uuid.UUID,
    job_id: uuid.UUID,
    language: str,
    record: LanguageRecord,
    review: dict[str, Any],
    quota: int,
) -> int:
    """In the caller's transaction (the language locked): keep the current outputs as their
    version, leave ``review`` for the worker, forget the stages the render runs again, and
    re-queue the job for this language alone. Returns the version the render makes."""
    # A job in review waits for exactly this: a render approves one of its languages.
    if record.job_status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REVIEW}:
        raise Conflict(
            f"the job is {record.job_status}; render once it has finished",
            code="job_not_finished",
            detail={"status": record.job_status},
        )
    if record.status not in {JobStatus.SUCCEEDED, JobStatus.REVIEW}:
        raise Conflict(
            f"the language is {record.status}; only a dubbed language can be rendered again",
            code="language_not_renderable",
            detail={"status": record.status},
        )
    await check_job_quota(conn, owner, quota)
    rendered = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM artifacts WHERE job_id = $1 AND language = $2)",
        job_id,
        language,
    )
    # A language approved out of review has no outputs yet: its first render makes version 1.
    version = record.output_version + 1 if rendered else record.output_version
    await conn.execute(
        "INSERT INTO artifact_versions (job_id, language, version, kind, object_key,"
        " content_type, size_bytes, sha256, created_at)"
        " SELECT job_id, language, $3, kind, object_key, content_type, size_bytes, sha256,"
        " created_at FROM artifacts WHERE job_id = $1 AND language = $2"
        " ON CONFLICT DO NOTHING",
        job_id,
        language,
        record.output_version,
    )
    await conn.execute(
        "DELETE FROM job_stages WHERE job_id = $1 AND language = $2 AND stage = ANY($3::text[])",
        job_id,
        language,
        list(RENDER_STAGES),
    )
    await conn.execute(
        "INSERT INTO job_stages (job_id, stage, language, attempt, status, started_at,"
        " finished_at, outputs) VALUES ($1, $2, $3, $4, 'succeeded', now(), now(), $5)"
        " ON CONFLICT (job_id, stage, language) DO UPDATE SET attempt = EXCLUDED.attempt,"
        " outputs = EXCLUDED.outputs, started_at = now(), finished_at = now()",
        job_id,
        REVIEW_STAGE,
        language,
        record.attempt,
        {**review, "version": version},
    )
    await conn.execute(
        "DELETE FROM segment_edits WHERE job_id = $1 AND language = $2", job_id, language
    )
    await conn.execute(
        "UPDATE job_targets SET status = 'queued', output_version = $3, current_stage = NULL,"
        " progress = 0, error_code = NULL, error_message = NULL, updated_at = now()"
        " WHERE job_id = $1 AND language = $2",
        job_id,
        language,
        version,
    )
    retry = await conn.fetchval(
        "UPDATE jobs SET status = 'queued', retries = retries + 1, error_code = NULL,"
        " error_message = NULL, current_stage = NULL, finished_at = NULL, eta_seconds = NULL,"
        " updated_at = now() WHERE id = $1 RETURNING retries",
        job_id,
    )
    # The next terminal state is a new state change: its webhook goes out again. Not
    # review_ready: the job (and each language) was ready for review once, however many renders
    # approve its languages one by one.
    await conn.execute(
        "DELETE FROM webhook_deliveries WHERE job_id = $1 AND status <> 'pending'"
        " AND state <> 'review'",
        job_id,
    )
    await record_event(
        conn, job_id, "state", {"status": JobStatus.QUEUED, "render": language, "version": version}
    )
    await enqueue(conn, settings, JobMessage(job_id, retry))
    return version


async def versions(
    pool: asyncpg.Pool, job_id: uuid.UUID, language: str
) -> dict[int, list[asyncpg.Record]]:
    """Each earlier version's files (kind, object_key, content_type, size_bytes, created_at)."""
    rows = await pool.fetch(
        "SELECT version, kind, object_key, content_type, size_bytes, created_at"
        " FROM artifact_versions"
        " WHERE job_id = $1 AND language = $2 ORDER BY version, kind",
        job_id,
        language,
    )
    found: dict[int, list[asyncpg.Record]] = {}
    for row in rows:
        found.setdefault(row["version"], []).append(row)
    return found
