"""What the sync and async clients share: configuration, errors, events, the multipart body."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict

from polydub.errors import InvalidInput
from polydub.jobs import SETTLED
from polydub.languages import check_served, suggest, unsupported_message
from polydub.languages import resolve as resolve_language
from polydub.retry import Backoff
from polydub.schemas import ErrorInfo, JobOut, LanguagesOut, TargetOut

API_PREFIX = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK = 256 * 1024
# Reads on an event stream wait for the server's keep-alives (15 s by default): allow more.
STREAM_READ_TIMEOUT = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})

# (bytes sent, bytes in all) while a file uploads
UploadProgress = Callable[[int, int], None]
# (language, file name, bytes written, bytes in all) while an output downloads
DownloadProgress = Callable[[str, str, int, int], None]


class ApiError(Exception):
    """An error answer from the API: its envelope's stable ``code``, message and detail."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error of a response whose body has been read."""
        retry_after = _float(response.headers.get("retry-after"))
        try:
            error = response.json()["error"]
            return cls(
                response.status_code,
                str(error["code"]),
                str(error["message"]),
                error.get("detail"),
                retry_after,
            )
        except (ValueError, KeyError, TypeError):
            text = response.text[:200]
            return cls(
                response.status_code,
                f"http_{response.status_code}",
                text or response.reason_phrase,
                None,
                retry_after,
            )


class JobEvent(BaseModel):
    """One message of a job's progress stream (SSE ``/events``, WebSocket ``/progress``).

    ``type`` is ``state`` (status changes; ``status``, ``error``), ``progress`` (``stage``,
    ``progress`` over the whole job, ``eta_seconds``; with ``language`` and
    ``target_progress`` for a per-language stage) or ``target`` (a language finished:
    ``language``, ``status``, ``error``). ``id`` orders them; resume after it.
    """

    model_config = ConfigDict(extra="allow")

    id: int
    type: str
    status: str | None = None
    attempt: int | None = None
    stage: str | None = None
    progress: float | None = None
    eta_seconds: float | None = None
    language: str | None = None
    target_progress: float | None = None
    stage_progress: float | None = None  # within the stage named by ``stage``
    error: ErrorInfo | None = None

    @property
    def terminal(self) -> bool:
        """The job reached succeeded, failed or cancelled, or waits for a review: nothing
        follows until someone acts."""
        return self.type == "state" and self.status in SETTLED


def polled_events(job: JobOut, seen: dict[str, str]) -> list[JobEvent]:
    """Events made from a polled job, for callers of ``wait`` when no stream is available
    (``id`` 0: they cannot be resumed from). ``seen`` remembers target statuses between polls."""
    events = [
        JobEvent(
            id=0,
            type="progress",
            stage=job.stage,
            progress=job.progress,
            eta_seconds=job.eta_seconds,
        )
    ]
    for target in job.targets:
        events.append(_target_progress(target, job.progress))
        if target.status in SETTLED and seen.get(target.language) != target.status:
            events.append(
                JobEvent(
                    id=0,
                    type="target",
                    language=target.language,
                    status=target.status,
                    error=target.error,
                )
            )
        seen[target.language] = target.status
    if job.status in SETTLED:
        events.append(JobEvent(id=0, type="state", status=job.status, error=job.error))
    return events


def _target_progress(target: TargetOut, overall: float) -> JobEvent:
    return JobEvent(
        id=0,
        type="progress",
        stage=target.stage,
        progress=overall,
        language=target.language,
        target_progress=target.progress,
    )


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """The API's address and key: the arguments, else POLYDUB_API_URL / POLYDUB_API_KEY."""
    url = base_url or os.environ.get("POLYDUB_API_URL") or DEFAULT_URL
    key = api_key or os.environ.get("POLYDUB_API_KEY") or None
    return url.rstrip("/"), key


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_targets(
    target_languages: Sequence[str] | str, *, subtitles_only: bool, served: LanguagesOut | None
) -> None:
    """The server's language checks, made before a file is uploaded: each target must name a
    language (``es``, ``spa``, ``es-ES``) that the served models can produce (``served``; None
    when it could not be read, and then the server decides). Raises the ApiError it would."""
    tags = target_languages.split(",") if isinstance(target_languages, str) else target_languages
    codes: list[str] = []
    for tag in (str(t) for t in tags):
        if not tag.strip():
            continue
        language = resolve_language(tag)
        if language is None:
            detail = {"language": tag, "suggestion": suggest(tag)}
            raise ApiError(422, "unsupported_language", unsupported_message(tag), detail)
        codes.append(language.code)
    if served is None:
        return
    try:
        check_served(codes, served.targets(subtitles_only=subtitles_only))
    except InvalidInput as refused:
        raise ApiError(422, refused.code, refused.message, refused.detail) from None


# What the dub is mixed over: the original ducked, its separated background, or silence.
Background = Literal["keep", "separate", "drop"]


def job_fields(
    target_languages: Sequence[str] | str,
    *,
    source_language: str,
    num_speakers: int | None,
    keep_background: bool,
    subtitles_only: bool,
    review: bool = False,
    background: Background | None = None,
    start_time: float | None,
    end_time: float | None,
    callback_url: str | None,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """The form fields of ``POST /jobs`` (the server validates them: a typo is a 422)."""
    targets = (
        target_languages
        if isinstance(target_languages, str)
        else ",".join(str(t) for t in target_languages)
    )
    fields = [
        ("target_languages", targets),
        ("source_language", source_language),
        ("keep_background", "true" if keep_background else "false"),
        ("subtitles_only", "true" if subtitles_only else "false"),
    ]
    if review:  # each language stops after translation until a render approves it
        fields.append(("review", "true"))
    optional = {
        "num_speakers": num_speakers,
        # None: the server's default (separate when a separation model is served, else keep).
        "background": background,
        "start_time": start_time,
        "end_time": end_time,
        "callback_url": callback_url,
        "name": name,
        # A JSON object in a form field: the server parses and size-checks it.
        "metadata": json.dumps(dict(metadata)) if metadata else None,
    }
    fields += [(name, str(value)) for name, value in optional.items() if value is not None]
    return fields


class MultipartFile:
    """A ``multipart/form-data`` body: the fields, then the file read in chunks as it is sent,
    with its length known up front (the server refuses an oversized upload before reading it).
    Iterate it (sync or async) as the request content; ``on_progress`` sees the file's bytes."""

    def __init__(
        self,
        source: str | Path | BinaryIO,
        fields: list[tuple[str, str]],
        on_progress: UploadProgress | None = None,
        filename: str | None = None,
    ) -> None:
        self.path: Path | None = None
        self.stream: BinaryIO | None = None
        if isinstance(source, str | Path):
            self.path = Path(source)
            self.size = self.path.stat().st_size
            upload_name = filename or self.path.name
        else:
            # A binary file object (open(..., "rb"), io.BytesIO): sent from where it stands, so
            # its length is what is left of it; it must be seekable to know that up front.
            if not hasattr(source, "read") or isinstance(source.read(0), str):
                raise TypeError("create_job needs a path or a file opened in binary mode")
            if not source.seekable():
                raise TypeError(
                    "create_job needs a seekable file object (its length is sent first)"
                )
            self.stream = source
            start = source.tell()
            self.size = source.seek(0, os.SEEK_END) - start
            source.seek(start)
            upload_name = filename or Path(str(getattr(source, "name", "") or "upload")).name
        self.on_progress = on_progress
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = bytearray()
        for name, value in fields:
            head += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            )
            head += value.encode() + b"\r\n"
        head += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '.encode()
        head += _filename_param(upload_name) + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
        self.head = bytes(head)
        self.tail = f"\r\n--{boundary}--\r\n".encode()

    @property
    def length(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.length)}

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        sent = 0
        self._report(sent)
        with self._open() as file:
            while chunk := file.read(CHUNK):
                sent += len(chunk)
                yield chunk
                self._report(sent)
        yield self.tail

    def _open(self) -> contextlib.AbstractContextManager[BinaryIO]:
        # The caller's file object stays open (it is theirs to close), a path is opened here.
        if self.stream is not None:
            return contextlib.nullcontext(self.stream)
        assert self.path is not None
        return self.path.open("rb")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import asyncio

        yield self.head
        sent = 0
        self._report(sent)
        opened = self._open()
        file = await asyncio.to_thread(opened.__enter__)
        try:
            while chunk := await asyncio.to_thread(file.read, CHUNK):
                sent += len(chunk)
                yield chunk
                self._report(sent)
        finally:
            opened.__exit__(None, None, None)
        yield self.tail

    def _report(self, sent: int) -> None:
        if self.on_progress is not None:
            self.on_progress(sent, self.size)


def _filename_param(name: str) -> bytes:
    # Plain ASCII names as they are; anything else as RFC 5987 UTF-8 (the server accepts both).
    if name.isascii() and '"' not in name and name.isprintable():
        return f'filename="{name}"'.encode()
    return f"filename*=UTF-8''{quote(name, safe='')}".encode()


def output_path(out_dir: Path, language: str, filename: str) -> Path:
    """Where one output file goes: ``<out_dir>/<language>/<name>``, never outside it."""
    name = Path(filename).name
    if name in ("", ".", "..") or Path(language).name != language or language in ("", ".", ".."):
        raise ValueError(f"refusing to write an output named {filename!r} for {language!r}")
    return out_dir / language / name


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_BACKOFF = Backoff(0.5, 8.0)


def backoff(attempt: int, error: ApiError | None) -> float:
    """Seconds before retry ``attempt``: the server's Retry-After, else exponential."""
    if error is not None and error.retry_after is not None:
        return min(error.retry_after, 30.0)
    return _BACKOFF.delay(attempt)


def reporter(
    on_progress: DownloadProgress | None, language: str, filename: str
) -> Callable[[int, int], None]:
    """One file's progress callback, bound to its language and name."""

    def report(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(language, filename, done, total)

    return report
