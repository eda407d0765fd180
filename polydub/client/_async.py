"""``AsyncClient``: the polydub API from asyncio code; the same methods as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import urljoin

import httpx
from httpx_sse import aconnect_sse

from polydub.client._common import (
    API_PREFIX,
    CHUNK,
    RETRY_STATUSES,
    STREAM_READ_TIMEOUT,
    ApiError,
    Background,
    DownloadProgress,
    JobEvent,
    MultipartFile,
    UploadProgress,
    auth_headers,
    backoff,
    check_targets,
    job_fields,
    output_path,
    polled_events,
    resolve,
)
from polydub.client._common import (
    reporter as _reporter,
)
from polydub.client._presigned import (
    DEFAULT_UPLOAD_THRESHOLD,
    ProgressReader,
    UploadMode,
    UploadSource,
    check_form_answer,
    form_request,
    json_body,
    wants_presigned,
)
from polydub.client._sync import _check
from polydub.jobs import SETTLED, JobStatus
from polydub.schemas import JobOut, JobPage, LanguagesOut, OutputsOut, PurgeOut

JobId = uuid.UUID | str


class AsyncClient:
    """An asyncio client of one polydub API (see ``Client``).

    ``base_url`` and ``api_key`` default to ``POLYDUB_API_URL`` and ``POLYDUB_API_KEY``. Every
    method raises ``ApiError`` (with the envelope's ``code``) for an error answer; reads are
    retried a few times on 429/502/503/504 and connection errors.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        upload_threshold: int = DEFAULT_UPLOAD_THRESHOLD,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = resolve(base_url, api_key)
        self.max_retries = max_retries
        # Files of this many bytes or more go through a presigned upload (create_job's upload).
        self.upload_threshold = upload_threshold
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={**auth_headers(self.api_key), "User-Agent": "polydub-client"},
            timeout=timeout,
            transport=transport,
        )
        # Presigned links go to object storage: never send them the API key.
        self._files = httpx.AsyncClient(timeout=timeout, follow_redirects=True)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._files.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- requests

    async def _request(self, method: str, path: str, *, retry: bool = False, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            error: ApiError | None = None
            try:
                response = await self._http.request(method, API_PREFIX + path, **kwargs)
            except httpx.TransportError:
                if not retry or attempt >= self.max_retries:
                    raise
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                error = ApiError.from_response(response)
                if (
                    not retry
                    or response.status_code not in RETRY_STATUSES
                    or attempt >= self.max_retries
                ):
                    raise error
            attempt += 1
            await asyncio.sleep(backoff(attempt, error))

    # --- jobs

    async def _served(self) -> LanguagesOut | None:
        """What the server can dub into, for the checks before an upload; None (the server then
        decides) when it cannot say now: no retries, so a submission is never held up here."""
        try:
            return LanguagesOut.model_validate(await self._request("GET", "/languages"))
        except (ApiError, httpx.TransportError):
            return None

    async def create_job(
        self,
        file: str | Path | BinaryIO,
        target_languages: Sequence[str] | str,
        *,
        source_language: str = "auto",
        num_speakers: int | None = None,
        keep_background: bool = True,
        background: Background | None = None,
        subtitles_only: bool = False,
        review: bool = False,
        start_time: float | None = None,
        end_time: float | None = None,
        callback_url: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        on_progress: UploadProgress | None = None,
        filename: str | None = None,
        upload: UploadMode = "auto",
    ) -> JobOut:
        """Upload a video (or audio) and submit the job; ``on_progress(sent, total)`` follows
        the upload. ``file`` is a path or a seekable binary file object (``filename`` names
        the latter). With ``idempotency_key``, a repeat returns the first job.
        ``upload``: "direct" sends the file in the request, "presigned" straight to object
        storage through ``POST /uploads``' form, "auto" presigned from ``upload_threshold``
        bytes on."""
        served = await self._served()
        check_targets(target_languages, subtitles_only=subtitles_only, served=served)
        fields = job_fields(
            target_languages,
            source_language=source_language,
            num_speakers=num_speakers,
            keep_background=keep_background,
            background=background,
            subtitles_only=subtitles_only,
            review=review,
            start_time=start_time,
            end_time=end_time,
            callback_url=callback_url,
            name=name,
            metadata=metadata,
        )
        source = UploadSource.of(file, filename)
        if wants_presigned(upload, source.size, self.upload_threshold):
            upload_id = await self._upload_presigned(source, on_progress)
            return await self._submit_json(json_body(fields, upload_id=upload_id), idempotency_key)
        body = MultipartFile(file, fields, on_progress, filename)
        headers = body.headers()
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = await self._request(
            "POST",
            "/jobs",
            content=body.__aiter__(),
            headers=headers,
            timeout=httpx.Timeout(30.0, write=300.0, read=300.0),  # the server probes the file
        )
        return JobOut.model_validate(data)

    async def create_job_from_url(
        self,
        source_url: str,
        target_languages: Sequence[str] | str,
        *,
        source_language: str = "auto",
        num_speakers: int | None = None,
        keep_background: bool = True,
        background: Background | None = None,
        subtitles_only: bool = False,
        review: bool = False,
        start_time: float | None = None,
        end_time: float | None = None,
        callback_url: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> JobOut:
        """Submit a job whose media the server's worker fetches from ``source_url`` (https,
        public hosts; the server must enable it, else ApiError ``source_url_disabled``); nothing
        is uploaded. A fetch the worker refuses fails the job with a ``source_url_*`` code."""
        served = await self._served()
        check_targets(target_languages, subtitles_only=subtitles_only, served=served)
        fields = job_fields(
            target_languages,
            source_language=source_language,
            num_speakers=num_speakers,
            keep_background=keep_background,
            background=background,
            subtitles_only=subtitles_only,
            review=review,
            start_time=start_time,
            end_time=end_time,
            callback_url=callback_url,
            name=name,
            metadata=metadata,
        )
        body = json_body(fields, source_url=source_url)
        return await self._submit_json(body, idempotency_key)

    async def _upload_presigned(
        self, source: UploadSource, on_progress: UploadProgress | None
    ) -> str:
        """Reserve an upload, send the file to its form; the upload id."""
        reserved = await self._request("POST", "/uploads", params={"filename": source.filename})
        with source.open() as file:
            reader = ProgressReader(file, source.size, on_progress)
            form = form_request(reserved, reader, source.filename)
            check_form_answer(await self._files.post(**form))
        return str(reserved["upload_id"])

    async def _submit_json(self, body: dict[str, Any], idempotency_key: str | None) -> JobOut:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = await self._request(
            "POST",
            "/jobs",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(30.0, read=300.0),  # the server copies and probes the file
        )
        return JobOut.model_validate(data)

    async def get_job(self, job_id: JobId) -> JobOut:
        return JobOut.model_validate(await self._request("GET", f"/jobs/{job_id}", retry=True))

    async def list_jobs(
        self, *, status: JobStatus | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobPage:
        """One page, newest first; pass ``next_cursor`` back as ``cursor`` for the next."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return JobPage.model_validate(
            await self._request("GET", "/jobs", params=params, retry=True)
        )

    async def iter_jobs(
        self, *, status: JobStatus | None = None, page_size: int = 50
    ) -> AsyncIterator[JobOut]:
        """Every job of this key, newest first, page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_jobs(status=status, limit=page_size, cursor=cursor)
            for job in page.items:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel_job(self, job_id: JobId) -> JobOut:
        """Cancel: at once if queued, at the next stage boundary if running."""
        return JobOut.model_validate(await self._request("DELETE", f"/jobs/{job_id}"))

    async def retry_job(self, job_id: JobId) -> JobOut:
        return JobOut.model_validate(await self._request("POST", f"/jobs/{job_id}/retry"))

    async def delete_job_data(self, job_id: JobId) -> PurgeOut:
        return PurgeOut.model_validate(await self._request("DELETE", f"/jobs/{job_id}/data"))

    async def languages(self) -> LanguagesOut:
        return LanguagesOut.model_validate(await self._request("GET", "/languages", retry=True))

    async def outputs(
        self,
        job_id: JobId,
        language: str,
        *,
        preview_start: float | None = None,
        preview_end: float | None = None,
    ) -> OutputsOut:
        """Presigned links to a language's files (valid ``expires_in_seconds``)."""
        params = {
            k: v
            for k, v in (("preview_start", preview_start), ("preview_end", preview_end))
            if v is not None
        }
        data = await self._request(
            "GET", f"/jobs/{job_id}/outputs/{language}", params=params, retry=True
        )
        return OutputsOut.model_validate(data)

    # --- progress

    async def events(self, job_id: JobId, *, after: int = 0) -> AsyncIterator[JobEvent | None]:
        """The job's events from the SSE stream, resumed after a dropped connection, until the
        terminal state. Yields ``None`` on each keep-alive, so a caller can check a deadline."""
        last = after
        failures = 0
        while True:
            try:
                async with aconnect_sse(
                    self._http,
                    "GET",
                    f"{API_PREFIX}/jobs/{job_id}/events",
                    headers={"Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(30.0, read=STREAM_READ_TIMEOUT),
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        raise ApiError.from_response(source.response)
                    async for sse in source.aiter_sse():
                        if not sse.data:  # a keep-alive comment: no event
                            yield None
                            continue
                        event = JobEvent.model_validate_json(sse.data)
                        last = event.id
                        failures = 0
                        yield event
                        if event.terminal:
                            return
            except httpx.TransportError:
                failures += 1
                if failures > self.max_retries:
                    raise
                await asyncio.sleep(backoff(failures, None))
                continue
            # The server ends the stream after the terminal state; ended without one, it went
            # away (a restart): resume after the last event.
            if (await self.get_job(job_id)).status in SETTLED:
                return

    async def wait(
        self,
        job_id: JobId,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the same signature as Client.wait
        on_event: Callable[[JobEvent], None] | None = None,
        poll_interval: float = 2.0,
        follow: bool = True,
    ) -> JobOut:
        """Block until the job is succeeded, failed, cancelled or waits in review; return it.

        Follows the SSE stream (``on_event`` sees every event); if the stream cannot be had
        (a proxy that buffers, a dropped connection that will not come back), polls the job
        every ``poll_interval`` seconds instead. ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if follow:
            try:
                async for event in self.events(job_id):
                    _check(deadline, job_id)
                    if event is not None and on_event is not None:
                        on_event(event)
                return await self.get_job(job_id)
            except ApiError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise  # not yours, not found, unauthorised: polling cannot help
            except (httpx.TransportError, ValueError):
                pass  # fall back to polling
        seen: dict[str, str] = {}
        while True:
            job = await self.get_job(job_id)
            if on_event is not None:
                for event in polled_events(job, seen):
                    on_event(event)
            if job.status in SETTLED:
                return job
            _check(deadline, job_id)
            await asyncio.sleep(poll_interval)

    # --- outputs

    async def download_outputs(
        self,
        job_id: JobId,
        out_dir: str | Path,
        *,
        languages: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        on_progress: DownloadProgress | None = None,
    ) -> dict[str, list[Path]]:
        """Download each finished language's files to ``out_dir/<language>/`` (default: every
        succeeded language, every kind); returns the paths per language."""
        out = Path(out_dir)
        if languages is None:
            job = await self.get_job(job_id)
            languages = [t.language for t in job.targets if t.status == "succeeded"]
        written: dict[str, list[Path]] = {}
        for language in languages:
            listing = await self.outputs(job_id, language)
            paths = []
            for file in listing.files:
                if kinds is not None and file.kind not in kinds:
                    continue
                path = output_path(out, language, file.filename)
                report = _reporter(on_progress, language, file.filename)
                await self._download(
                    urljoin(self.base_url + "/", file.url), path, file.size_bytes, report
                )
                paths.append(path)
            written[language] = paths
        return written

    async def _download(
        self, url: str, path: Path, size: int, progress: Callable[[int, int], None]
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        done = 0
        async with self._files.stream("GET", url) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ApiError.from_response(response)
            file = await asyncio.to_thread(partial.open, "wb")
            try:
                async for chunk in response.aiter_bytes(CHUNK):
                    await asyncio.to_thread(file.write, chunk)
                    done += len(chunk)
                    progress(done, size)
            finally:
                file.close()
        if done != size:
            partial.unlink(missing_ok=True)
            raise ApiError(502, "incomplete_download", f"{path.name}: {done} of {size} bytes")
        partial.replace(path)
