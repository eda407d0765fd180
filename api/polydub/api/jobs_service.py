"""The jobs as a service: the two ways a job comes in, and everything that follows.

Intake: a file streamed in a multipart form (``submit_file``), or one uploaded beforehand through
a presigned POST form and named by its upload id (``submit_uploaded``), or a ``source_url`` the
worker fetches (``submit_from_url``: no input yet; the worker stores and pins it). The first two:
the media is
stored under the job's input key, a key only the server writes, and probed; the job pins that
object's ETag, and the job, its first event and its queue message commit together. Then: read,
list, cancel, retry, purge.

routes/jobs.py parses HTTP and maps these answers to responses; the SQL is db/jobs.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg

from polydub.api.auth import ApiKey
from polydub.api.db import jobs as jobs_db
from polydub.api.db import uploads as uploads_db
from polydub.api.db.quota import active_jobs
from polydub.api.idempotency import check_same_request
from polydub.api.job_view import job_json
from polydub.api.multipart import Upload, too_large
from polydub.api.ratelimit import quota_error
from polydub.api.retention import purge_job
from polydub.api.webhooks import check_callback_url
from polydub.errors import Conflict, InvalidInput, NotFound, RetryableError
from polydub.jobs import ACTIVE, JobKeys, JobStatus, publish_event
from polydub.languages import check_served
from polydub.media.probe import Limits, MediaInfo, probe
from polydub.media.source_url import check_source_url
from polydub.schemas import (
    JobFromUpload,
    JobFromUrl,
    JobListQuery,
    JobOptions,
    JobOut,
    JobPage,
    PurgeOut,
    UploadOut,
)
from polydub.telemetry.metrics import job_transition
from polydub.telemetry.tracing import span

if TYPE_CHECKING:
    from polydub.api.deps import AppState

log = logging.getLogger("polydub.api.jobs")


@dataclass(frozen=True)
class Accepted:
    """A submitted job, and whether an earlier request with its Idempotency-Key created it."""

    job: JobOut
    replayed: bool


class JobService:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings
        # This request's fingerprint (idempotency.request_hash), set by the route once the body
        # is read: stored with a new job's Idempotency-Key, compared with a replayed one's.
        self.request_hash: bytes | None = None
        # What an existing job's record may also be: the fingerprint by an older formula.
        self.also_accepted: frozenset[bytes] = frozenset()

    # -- intake -------------------------------------------------------------------------------

    async def replay(self, key: ApiKey, idempotency_key: str | None) -> Accepted | None:
        """The job an earlier request with this Idempotency-Key created, if any; 422
        ``idempotency_mismatch`` if that request differs from this one (``request_hash``)."""
        if not idempotency_key:
            return None
        row = await jobs_db.find_by_idempotency_key(self.state.pool, key.id, idempotency_key)
        if row is None:
            return None
        check_same_request(row, self.request_hash, self.also_accepted)
        return Accepted(self._job_out(row), replayed=True)

    async def check_quota(self, key: ApiKey, idempotency_key: str | None = None) -> None:
        """429 at the concurrent-jobs quota, unless the Idempotency-Key names a job already
        (a replay is never over quota)."""
        if idempotency_key and await jobs_db.find_by_idempotency_key(
            self.state.pool, key.id, idempotency_key
        ):
            return
        if await active_jobs(self.state.pool, key.id) >= key.max_concurrent_jobs:
            raise quota_error(key.max_concurrent_jobs)

    @contextlib.asynccontextmanager
    async def spool(self) -> AsyncIterator[Path]:
        """A scratch folder for one incoming file, removed with everything in it afterwards."""
        path = Path(tempfile.mkdtemp(prefix="polydub-upload-", dir=self.settings.api_tmp_dir))
        try:
            yield path
        finally:
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def submit_file(
        self, key: ApiKey, upload: Upload, options: JobOptions, idempotency_key: str | None
    ) -> Accepted:
        """A job from a file received in the request (already spooled to disk)."""
        self._check_options(options)
        await self._check_served(options)
        assert upload.path is not None and upload.container is not None
        media = await self._probe(upload.path, options)
        job_id = uuid.uuid4()
        input_key = JobKeys(job_id).input
        stored = await self.state.store.put_file(
            input_key,
            upload.path,
            content_type=media.content_type,
            metadata={"filename": upload.filename or ""},
        )
        return await self._accept(
            jobs_db.NewJob(
                id=job_id,
                owner_id=key.id,
                options=options,
                input_key=input_key,
                input_etag=stored.etag,
                input_filename=upload.filename,
                input_bytes=upload.size,
                media=media.to_dict(),
                idempotency_key=idempotency_key,
                quota=key.max_concurrent_jobs,
            )
        )

    async def submit_uploaded(
        self, key: ApiKey, request: JobFromUpload, idempotency_key: str | None
    ) -> Accepted:
        """A job from a presigned upload: the upload's id becomes the job's. The object the
        client sent is copied to the job's input key and the copy is what is probed and pinned:
        the client's form stays signed until it expires, but it can only write the upload key,
        which no job reads."""
        self._check_options(request)
        await self._check_served(request)
        pool, store = self.state.pool, self.state.store
        upload = await uploads_db.find_upload(pool, request.upload_id, key.id)
        if upload is None:
            raise NotFound(f"upload {request.upload_id} not found", code="upload_not_found")
        await self.check_quota(key)
        job_id: uuid.UUID = upload["id"]
        if not await store.exists(upload["object_key"]):
            raise Conflict("nothing was uploaded to the upload URL yet", code="upload_missing")
        if not await uploads_db.claim_upload(pool, job_id):  # a concurrent twin took it
            raise NotFound(f"upload {request.upload_id} not found", code="upload_not_found")
        try:
            accepted = await self._accept_upload(key, job_id, upload, request, idempotency_key)
        except InvalidInput:
            await self._drop_input(job_id)  # refused for good: its bytes go with it
            await self._drop_upload(job_id)
            raise
        except BaseException:
            await self._drop_input(job_id)
            with contextlib.suppress(Exception):
                await uploads_db.release_upload(pool, job_id)  # not the upload's fault
            raise
        await self._drop_upload(job_id)  # the job has its own copy
        return accepted

    async def _accept_upload(
        self,
        key: ApiKey,
        job_id: uuid.UUID,
        upload: asyncpg.Record,
        request: JobFromUpload,
        idempotency_key: str | None,
    ) -> Accepted:
        store = self.state.store
        sent = await store.stat(upload["object_key"])
        if sent.size > self.settings.media_max_bytes:  # an S3 server that ignored the policy
            raise too_large(self.settings.media_max_bytes)
        input_key = JobKeys(job_id).input
        # Whatever the client writes next lands on the upload key; the job's copy is this one.
        etag = await store.copy(upload["object_key"], input_key, etag=sent.etag)
        async with self.spool() as spool:
            local = await store.download(input_key, spool / "source", etag=etag)
            media = await self._probe(local, request)
        options = JobOptions.model_validate(request.model_dump(exclude={"upload_id"}))
        return await self._accept(
            jobs_db.NewJob(
                id=job_id,
                owner_id=key.id,
                options=options,
                input_key=input_key,
                input_etag=etag,
                input_filename=upload["filename"],
                input_bytes=sent.size,
                media=media.to_dict(),
                idempotency_key=idempotency_key,
                quota=key.max_concurrent_jobs,
            )
        )

    async def reserve_upload(self, key: ApiKey, filename: str | None) -> UploadOut:
        """A presigned POST form for a file too large to send in one request: one key under the
        upload prefix, at most media_max_bytes, valid as long as the reservation."""
        upload_id = uuid.uuid4()  # it becomes the job's id
        object_key = JobKeys(upload_id).upload
        # One instant for the row and the policy, so both expire together.
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(
            seconds=self.settings.api_upload_ttl_seconds
        )
        await uploads_db.reserve_upload(
            self.state.pool,
            upload_id,
            key.id,
            object_key,
            filename,
            expires_at,
            self.settings.api_max_open_uploads,
        )
        form = self.state.store.presigned_post(
            object_key, expires_at=expires_at, max_bytes=self.settings.media_max_bytes
        )
        return UploadOut(
            upload_id=upload_id,
            url=form.url,
            method="POST",
            fields=dict(form.fields),
            expires_at=expires_at,
            max_bytes=self.settings.media_max_bytes,
        )

    async def submit_from_url(
        self, key: ApiKey, request: JobFromUrl, idempotency_key: str | None
    ) -> Accepted:
        """A job whose media the worker fetches from ``source_url``: only the URL's form and
        policy are checked here (the API never fetches it); the job starts with no input."""
        if not self.settings.source_url_enabled:
            raise InvalidInput(
                "jobs from a source_url are not enabled on this server",
                code="source_url_disabled",
            )
        check_source_url(request.source_url, self.settings)
        self._check_options(request)
        await self._check_served(request)
        await self.check_quota(key)
        job_id = uuid.uuid4()
        name = Path(urlsplit(request.source_url).path).name or None
        return await self._accept(
            jobs_db.NewJob(
                id=job_id,
                owner_id=key.id,
                options=request,
                input_key=JobKeys(job_id).input,
                input_etag=None,
                input_filename=name[:255] if name else None,
                input_bytes=None,
                media=None,
                idempotency_key=idempotency_key,
                quota=key.max_concurrent_jobs,
            )
        )

    def _check_options(self, options: JobOptions) -> None:
        limit = self.settings.api_max_target_languages
        if len(options.target_languages) > limit:
            raise InvalidInput(
                f"at most {limit} target languages per job", code="too_many_target_languages"
            )
        if options.callback_url:
            check_callback_url(str(options.callback_url), self.settings)

    async def _check_served(self, options: JobOptions) -> None:
        """422 ``language_not_served`` for a target the served models cannot produce, before
        the file is stored or probed. A model server that cannot be reached does not refuse the
        job: the queue is there to ride out its outage, and the worker reports what fails."""
        from polydub.api.routes.languages import served_languages  # the route owns the cache

        try:
            served = await served_languages(self.state)
        except RetryableError:  # unreachable, restarting or overloaded: a passing state
            log.warning("model server unreachable: target languages not checked at submission")
            return
        check_served(
            options.target_languages, served.targets(subtitles_only=options.subtitles_only)
        )

    async def _probe(self, path: Path, options: JobOptions) -> MediaInfo:
        # The worker's validate stage runs this same check on the same Limits.
        media = await asyncio.to_thread(probe, path, Limits.from_settings(self.settings))
        if options.start_time is not None and options.start_time >= media.duration:
            raise InvalidInput(
                f"start_time {options.start_time:g} s is past the end of the media"
                f" ({media.duration:g} s)",
                code="invalid_time_range",
            )
        return media

    async def _accept(self, job: jobs_db.NewJob) -> Accepted:
        job = dataclasses.replace(job, idempotency_hash=self.request_hash)
        # The job's trace starts here: insert_job writes this span's context into the outbox
        # row, and the worker's spans continue it from the NATS message headers.
        attributes = {
            "polydub.job_id": str(job.id),
            "polydub.target_languages": list(job.options.target_languages),
            "polydub.source_language": job.options.source_language,
            "polydub.input_bytes": job.input_bytes,
        }
        try:
            with span("job.submit", attributes=attributes) as current:
                row, created, event = await jobs_db.insert_job(self.state.pool, job, self.settings)
                current.set_attribute("polydub.replayed", not created)
        except BaseException:
            await self._drop_input(job.id)  # nothing stored for a job that was not created
            raise
        if not created:
            await self._drop_input(job.id)
            # a concurrent twin with the same key
            check_same_request(row, self.request_hash, self.also_accepted)
            return Accepted(self._job_out(row), replayed=True)
        job_transition(JobStatus.QUEUED)
        self.state.relay.wake()
        await self._publish(job.id, event)
        log.info("job accepted", extra={"job_id": str(job.id), "bytes": job.input_bytes})
        return Accepted(self._job_out(row), replayed=False)

    async def _drop_input(self, job_id: uuid.UUID) -> None:
        with contextlib.suppress(Exception):
            await self.state.store.delete_prefix(JobKeys(job_id).input_prefix)

    async def _drop_upload(self, job_id: uuid.UUID) -> None:
        """The reservation and what was sent to it; anything the client sends later (its form
        is still signed) is an orphan for the retention sweep."""
        await uploads_db.delete_upload(self.state.pool, job_id)
        with contextlib.suppress(Exception):
            await self.state.store.delete_prefix(JobKeys(job_id).upload_prefix)

    # -- follow-up ----------------------------------------------------------------------------

    async def get(self, key: ApiKey, job_id: uuid.UUID) -> JobOut:
        return self._job_out(await jobs_db.get_job(self.state.pool, key.id, job_id))

    async def list_jobs(self, key: ApiKey, query: JobListQuery) -> JobPage:
        rows, next_cursor = await jobs_db.list_jobs(
            self.state.pool, key.id, status=query.status, limit=query.limit, cursor=query.cursor
        )
        return JobPage(items=[self._job_out(r) for r in rows], next_cursor=next_cursor)

    async def cancel(self, key: ApiKey, job_id: uuid.UUID) -> JobOut:
        row, event = await jobs_db.cancel_job(self.state.pool, key.id, job_id)
        if event is not None:  # it was queued: cancelled here, no worker will see it
            job_transition(JobStatus.CANCELLED)
        await self._publish(job_id, event)
        return self._job_out(row)

    async def retry(self, key: ApiKey, job_id: uuid.UUID) -> JobOut:
        with span("job.retry", attributes={"polydub.job_id": str(job_id)}):
            row, event = await jobs_db.retry_job(
                self.state.pool, key.id, job_id, self.settings, key.max_concurrent_jobs
            )
        job_transition(JobStatus.QUEUED)
        self.state.relay.wake()
        await self._publish(job_id, event)
        return self._job_out(row)

    async def purge(self, key: ApiKey, job_id: uuid.UUID) -> PurgeOut:
        status = await jobs_db.assert_owned(self.state.pool, key.id, job_id)
        if status in ACTIVE:
            raise Conflict("cancel the job before purging it", code="job_active")
        deleted = await purge_job(self.state.pool, self.state.store, job_id)
        return PurgeOut(job_id=job_id, deleted_objects=deleted)

    # -- shared -------------------------------------------------------------------------------

    def _job_out(self, row: asyncpg.Record | dict[str, Any]) -> JobOut:
        return JobOut.model_validate(job_json(row, self.settings))

    async def _publish(self, job_id: uuid.UUID, event: dict[str, Any] | None) -> None:
        """Wake SSE/WebSocket followers in every replica; the event is already committed."""
        if event is not None:
            await publish_event(await self.state.nats.get(), self.settings, job_id, event)
