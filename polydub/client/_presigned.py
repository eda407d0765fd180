"""Presigned uploads, shared by the sync and async clients: the file goes straight to object
storage through the form ``POST /uploads`` reserves (``url`` + ``fields``), then ``POST /jobs``
names the upload id. Used for files of ``upload_threshold`` bytes or more, or when asked."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx

from polydub.client._common import ApiError, UploadProgress

# "auto": presigned from upload_threshold bytes on, else the file in the POST /jobs request.
UploadMode = Literal["auto", "direct", "presigned"]
DEFAULT_UPLOAD_THRESHOLD = 64 * 1024 * 1024
# The storage server takes the whole file in one request: give it time.
FORM_TIMEOUT = httpx.Timeout(30.0, write=600.0, read=300.0)


@dataclass(frozen=True)
class UploadSource:
    """The file to send: a path, or a seekable binary file object sent from where it stands."""

    path: Path | None
    stream: BinaryIO | None
    size: int  # the bytes to send (what is left of a file object)
    filename: str

    @classmethod
    def of(cls, source: str | Path | BinaryIO, filename: str | None = None) -> UploadSource:
        if isinstance(source, str | Path):
            path = Path(source)
            return cls(path, None, path.stat().st_size, filename or path.name)
        # Its length is sent first (a form or a Content-Length): it must be seekable.
        if not hasattr(source, "read") or isinstance(source.read(0), str):
            raise TypeError("create_job needs a path or a file opened in binary mode")
        if not source.seekable():
            raise TypeError("create_job needs a seekable file object (its length is sent first)")
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
        name = filename or Path(str(getattr(source, "name", "") or "upload")).name
        return cls(None, source, size, name)

    def open(self) -> contextlib.AbstractContextManager[BinaryIO]:
        # The caller's file object stays open (it is theirs to close), a path is opened here.
        if self.stream is not None:
            return contextlib.nullcontext(self.stream)
        assert self.path is not None
        return self.path.open("rb")


class ProgressReader:
    """A file object for httpx ``files=``: the rest of ``file`` from where it stood, as if it
    started there (httpx seeks to 0 and measures with seek/tell), reporting each read."""

    def __init__(self, file: BinaryIO, size: int, on_progress: UploadProgress | None) -> None:
        self._file = file
        self._start = file.tell()
        self._size = size
        self._sent = 0
        self._on_progress = on_progress

    def tell(self) -> int:
        return self._file.tell() - self._start

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = self._file.seek(self._start + offset) - self._start
            self._sent = position  # httpx rewinds before it sends: count from there
            self._report()
            return position
        return self._file.seek(offset, whence) - self._start

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._sent += len(chunk)
        self._report()
        return chunk

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(min(self._sent, self._size), self._size)


def wants_presigned(mode: UploadMode, size: int, threshold: int) -> bool:
    if mode not in ("auto", "direct", "presigned"):
        raise ValueError(f"upload must be 'auto', 'direct' or 'presigned', not {mode!r}")
    return mode == "presigned" or (mode == "auto" and size >= threshold)


def form_request(upload: dict[str, Any], reader: ProgressReader, filename: str) -> dict[str, Any]:
    """The keyword arguments of the POST to the reserved form: its fields, then the file."""
    if upload.get("method", "POST") != "POST":
        raise ApiError(502, "upload_form_unsupported", f"unexpected method {upload['method']}")
    return {
        "url": upload["url"],
        "data": dict(upload["fields"]),
        "files": {"file": (filename, reader, "application/octet-stream")},
        "timeout": FORM_TIMEOUT,
    }


def check_form_answer(response: httpx.Response) -> None:
    """Object storage's answer to the form: 2xx, else ApiError ``upload_failed`` (its XML
    error code, e.g. EntityTooLarge, in the detail)."""
    if response.is_success:
        return
    text = response.text
    code = text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else None
    raise ApiError(
        response.status_code,
        "upload_failed",
        f"object storage refused the upload ({code or response.reason_phrase})",
        {"storage_code": code},
    )


def json_body(fields: Sequence[tuple[str, str]], **media: str) -> dict[str, Any]:
    """``POST /jobs``'s JSON naming the media (``upload_id`` after an upload, or
    ``source_url``), from the form fields (``job_fields``): the server reads the same strings
    as it does in a form, but target_languages as a list."""
    body: dict[str, Any] = dict(media)
    for name, value in fields:
        body[name] = value.split(",") if name == "target_languages" else value
    return body
