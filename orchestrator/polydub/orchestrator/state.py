"""The orchestrator's view of PostgreSQL: claiming a job, fenced stage records, progress, events.

Fencing: claiming a job bumps ``jobs.attempt``; every later write of that worker names the
attempt it holds and changes nothing if a newer attempt has taken the job over (a worker that was
stalled past the ack wait and then resumed). Such a worker gets ``Fenced`` and drops the job
without acking, so the newer delivery stays the only owner.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from polydub.errors import PolydubError
from polydub.jobs import (
    TERMINAL,
    ArtifactKind,
    JobStatus,
    record_event,
    record_webhook_delivery,
)
from polydub.telemetry.metrics import job_transition


class Fenced(Exception):
    """A newer attempt owns this job; the current worker must stop and must not ack."""


class Cancelled(Exception):
    """The job's owner asked to cancel; raised at a stage boundary."""


@dataclass(frozen=True)
class JobRecord:
    id: uuid.UUID
    attempt: int
    source_language: str | None
    targets: tuple[str, ...]
    options: dict[str, Any]
    input_key: str
    input_filename: str | None
    callback_url: str | None
    media: dict[str, Any] | None = None
    # The ETag of the input the API probed; every read of input_key is conditional on it.
    input_etag: str | None = None


@dataclass
class FinishedStages:
    """Outputs of the stages already recorded as succeeded: (stage, language) -> outputs."""

    outputs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def done(self, stage: str, language: str = "") -> bool:
        return (stage, language) in self.outputs

    def get(self, stage: str, language: str = "") -> dict[str, Any]:
        return self.outputs[(stage, language)]


class JobStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, job_id: uuid.UUID) -> JobRecord | None:
        """Take the job for a new attempt; None if it is already terminal (nothing to do)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                UPDATE jobs
                   SET attempt = attempt + 1,
                       status = CASE WHEN cancel_requested THEN status ELSE 'running' END,
                       started_at = COALESCE(started_at, now()), updated_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running')
             RETURNING id, attempt, source_language, options, input_key, input_filename,
                       callback_url, media, input_etag
                """,
                job_id,
            )
            if row is None:
                return None
            targets = await conn.fetch(
                "SELECT language FROM job_targets WHERE job_id = $1 ORDER BY language", job_id
            )
            await record_event(
                conn, job_id, "state", {"status": JobStatus.RUNNING, "attempt": row["attempt"]}
            )
        job_transition("running")
        return JobRecord(
            id=row["id"],
            attempt=row["attempt"],
            source_language=row["source_language"],
            targets=tuple(r["language"] for r in targets),
            options=row["options"] or {},
            input_key=row["input_key"],
            input_filename=row["input_filename"],
            callback_url=row["callback_url"],
            media=row["media"],
            input_etag=row["input_etag"],
        )

    async def superseded(self, job: JobRecord) -> bool:
        """Whether a newer attempt has claimed the job since ``job`` was (read, not locked:
        attempts only grow, so True stays true)."""
        current = await self.pool.fetchval("SELECT attempt FROM jobs WHERE id = $1", job.id)
        return bool(current != job.attempt)

    async def finished_stages(self, job_id: uuid.UUID) -> FinishedStages:
        rows = await self.pool.fetch(
            "SELECT stage, language, outputs FROM job_stages WHERE job_id = $1 AND status = 'succeeded'",
            job_id,
        )
        return FinishedStages({(r["stage"], r["language"]): r["outputs"] for r in rows})

    async def stage_metrics(self, job_id: uuid.UUID, language: str) -> dict[str, Any]:
        """stage -> metrics of the succeeded stages of the job and of this language, in the
        order they ran (the quality report's figures)."""
        rows = await self.pool.fetch(
            "SELECT stage, metrics FROM job_stages WHERE job_id = $1 AND status = 'succeeded'"
            " AND language IN ('', $2) ORDER BY started_at",
            job_id,
            language,
        )
        return {r["stage"]: r["metrics"] for r in rows}

    async def cancel_requested(self, job_id: uuid.UUID) -> bool:
        return bool(
            await self.pool.fetchval("SELECT cancel_requested FROM jobs WHERE id = $1", job_id)
        )

    async def start_stage(self, job: JobRecord, stage: str, language: str = "") -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                """
                INSERT INTO job_stages (job_id, stage, language, attempt, status, started_at)
                VALUES ($1, $2, $3, $4, 'running', now())
                ON CONFLICT (job_id, stage, language) DO UPDATE
                   SET attempt = EXCLUDED.attempt, status = 'running', started_at = now(),
                       finished_at = NULL, error_code = NULL, error_message = NULL
                """,
                job.id,
                stage,
                language,
                job.attempt,
            )
            if language:
                await conn.execute(
                    "UPDATE job_targets SET status = 'running', current_stage = $3, updated_at = now()"
                    " WHERE job_id = $1 AND language = $2 AND status IN ('queued', 'running')",
                    job.id,
                    language,
                    stage,
                )
            else:
                await conn.execute(
                    "UPDATE jobs SET current_stage = $2, updated_at = now() WHERE id = $1",
                    job.id,
                    stage,
                )

    async def finish_stage(
        self,
        job: JobRecord,
        stage: str,
        language: str,
        outputs: dict[str, Any],
        metrics: dict[str, Any],
        warnings: list[dict[str, str]] | None = None,
    ) -> None:
        """Record the stage as done; its quality warnings replace those of its earlier runs,
        on the job for a job-scope stage and on the target language otherwise."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                """
                UPDATE job_stages SET status = 'succeeded', finished_at = now(), outputs = $5,
                       metrics = $6
                 WHERE job_id = $1 AND stage = $2 AND language = $3 AND attempt = $4
                """,
                job.id,
                stage,
                language,
                job.attempt,
                outputs,
                metrics,
            )
            kept = (
                "COALESCE((SELECT jsonb_agg(w) FROM jsonb_array_elements(warnings) w"
                " WHERE w->>'stage' IS DISTINCT FROM $2), '[]'::jsonb) || $3::jsonb"
            )
            if language:
                await conn.execute(
                    f"UPDATE job_targets SET warnings = {kept} WHERE job_id = $1 AND language = $4",
                    job.id,
                    stage,
                    warnings or [],
                    language,
                )
            else:
                await conn.execute(
                    f"UPDATE jobs SET warnings = {kept} WHERE id = $1",
                    job.id,
                    stage,
                    warnings or [],
                )

    async def record_media(
        self, job: JobRecord, media: dict[str, Any] | None, detected: str | None = None
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                "UPDATE jobs SET media = COALESCE($2, media), detected_language = COALESCE($3, detected_language),"
                " updated_at = now() WHERE id = $1",
                job.id,
                media,
                detected,
            )

    async def record_input(
        self, job: JobRecord, etag: str, size: int, filename: str | None
    ) -> None:
        """Pin the input the worker fetched from a source_url, as the API pins an upload: a
        resumed attempt skips validate and reads input_key only if it is still this object."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                "UPDATE jobs SET input_etag = $2, input_bytes = $3,"
                " input_filename = COALESCE(input_filename, $4), updated_at = now() WHERE id = $1",
                job.id,
                etag,
                size,
                filename,
            )

    async def progress(
        self,
        job: JobRecord,
        stage: str,
        fraction: float,
        eta_seconds: float | None,
        language: str = "",
        target_fraction: float | None = None,
        stage_fraction: float | None = None,
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "stage": stage,
            "progress": round(fraction, 4),
            "eta_seconds": eta_seconds,
        }
        if stage_fraction is not None:
            event["stage_progress"] = round(stage_fraction, 4)  # within the stage: per-stage bars
        if language:
            event["language"] = language
            event["target_progress"] = round(target_fraction or 0.0, 4)
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                "UPDATE jobs SET progress = GREATEST(progress, $2), eta_seconds = $3, updated_at = now()"
                " WHERE id = $1",
                job.id,
                min(max(fraction, 0.0), 1.0),
                eta_seconds,
            )
            if language and target_fraction is not None:
                await conn.execute(
                    "UPDATE job_targets SET progress = GREATEST(progress, $3), updated_at = now()"
                    " WHERE job_id = $1 AND language = $2",
                    job.id,
                    language,
                    min(max(target_fraction, 0.0), 1.0),
                )
            return await record_event(conn, job.id, "progress", event)

    async def add_artifact(
        self,
        job: JobRecord,
        language: str,
        kind: ArtifactKind,
        key: str,
        content_type: str,
        size: int,
        sha256: str | None,
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                """
                INSERT INTO artifacts (job_id, language, kind, object_key, content_type, size_bytes, sha256)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (job_id, language, kind) DO UPDATE
                   SET object_key = EXCLUDED.object_key, content_type = EXCLUDED.content_type,
                       size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, created_at = now()
                """,
                job.id,
                language,
                kind,
                key,
                content_type,
                size,
                sha256,
            )

    async def finish_target(
        self, job: JobRecord, language: str, status: str, error: PolydubError | None = None
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            await conn.execute(
                """
                UPDATE job_targets SET status = $3, error_code = $4, error_message = $5,
                       progress = CASE WHEN $3 = 'succeeded' THEN 1 ELSE progress END,
                       current_stage = NULL, updated_at = now()
                 WHERE job_id = $1 AND language = $2
                """,
                job.id,
                language,
                status,
                error.code if error else None,
                error.message if error else None,
            )
            if status != JobStatus.SUCCEEDED:
                await _close_stages(conn, job.id, language, status, error)
            data: dict[str, Any] = {"language": language, "status": status}
            if error:
                data["error"] = error.to_dict()
            # A webhook per language: a caller can ship one language while another still runs.
            await record_webhook_delivery(conn, job.id, status, job.callback_url, language=language)
            return await record_event(conn, job.id, "target", data)

    async def target_statuses(self, job_id: uuid.UUID) -> dict[str, str]:
        rows = await self.pool.fetch(
            "SELECT language, status FROM job_targets WHERE job_id = $1", job_id
        )
        return {r["language"]: r["status"] for r in rows}

    async def finish_job(
        self,
        job: JobRecord | uuid.UUID,
        status: str,
        error: PolydubError | None = None,
        *,
        fenced: bool = True,
    ) -> dict[str, Any] | None:
        """Set the terminal state once; returns the state event, or None if already terminal.

        ``fenced=False`` is for failing a job from outside an attempt (MaxDeliver reached).
        """
        assert status in TERMINAL
        job_id = job.id if isinstance(job, JobRecord) else job
        async with self.pool.acquire() as conn, conn.transaction():
            if fenced and isinstance(job, JobRecord):
                await self._fence(conn, job)
            updated = await conn.fetchrow(
                """
                UPDATE jobs SET status = $2, error_code = $3, error_message = $4, finished_at = now(),
                       progress = CASE WHEN $2 = 'succeeded' THEN 1 ELSE progress END,
                       current_stage = NULL, eta_seconds = NULL, updated_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running')
             RETURNING callback_url
                """,
                job_id,
                status,
                error.code if error else None,
                error.message if error else None,
            )
            if updated is None:
                return None
            # Targets still open end with the job (cancelled or failed with the job's reason);
            # one waiting for review is cancelled with its job, and stays renderable otherwise.
            await conn.execute(
                """
                UPDATE job_targets SET status = $2, error_code = COALESCE(error_code, $3),
                       error_message = COALESCE(error_message, $4), updated_at = now()
                 WHERE job_id = $1 AND (status IN ('queued', 'running')
                                        OR (status = 'review' AND $2 = 'cancelled'))
                """,
                job_id,
                "cancelled" if status == "cancelled" else "failed",
                error.code if error else None,
                error.message if error else None,
            )
            if status != JobStatus.SUCCEEDED:
                await _close_stages(conn, job_id, None, status, error)
            data: dict[str, Any] = {"status": status}
            if error:
                data["error"] = error.to_dict()
            # The callback_url and the key's webhook endpoints, if there are any.
            await record_webhook_delivery(conn, job_id, JobStatus(status), updated["callback_url"])
            event = await record_event(conn, job_id, "state", data)
        job_transition(status)  # committed: counted once per job and state
        return event

    async def await_review(self, job: JobRecord, languages: list[str]) -> dict[str, Any] | None:
        """The job's languages that did not fail wait for review: the job waits in 'review'
        (not finished: no finished_at, no job.succeeded) until renders approve them. Its
        ``job.review_ready`` webhook goes out once per job, however many renders follow."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._fence(conn, job)
            updated = await conn.fetchrow(
                """
                UPDATE jobs SET status = 'review', current_stage = NULL, eta_seconds = NULL,
                       updated_at = now()
                 WHERE id = $1 AND status IN ('queued', 'running')
             RETURNING callback_url
                """,
                job.id,
            )
            if updated is None:
                return None
            await record_webhook_delivery(conn, job.id, JobStatus.REVIEW, updated["callback_url"])
            event = await record_event(
                conn, job.id, "state", {"status": JobStatus.REVIEW, "review": sorted(languages)}
            )
        job_transition(JobStatus.REVIEW)
        return event

    @staticmethod
    async def _fence(conn: asyncpg.Connection, job: JobRecord) -> None:
        # FOR UPDATE serialises against a newer claim committing at the same moment.
        current = await conn.fetchval("SELECT attempt FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        if current != job.attempt:
            raise Fenced(f"job {job.id}: attempt {job.attempt} was superseded by attempt {current}")


async def _close_stages(
    conn: asyncpg.Connection,
    job_id: uuid.UUID,
    language: str | None,
    status: str,
    error: PolydubError | None,
) -> None:
    """Stages still 'running' when their job (``language`` None) or language ends are closed
    with its outcome and reason: 'cancelled', or 'failed' with the error that ended it."""
    await conn.execute(
        """
        UPDATE job_stages SET status = $3, error_code = $4, error_message = $5, finished_at = now()
         WHERE job_id = $1 AND status = 'running' AND ($2::text IS NULL OR language = $2)
        """,
        job_id,
        language,
        "cancelled" if status == JobStatus.CANCELLED else "failed",
        error.code if error else None,
        error.message if error else None,
    )
