"""A streaming multipart/form-data reader for uploads: the file goes to disk chunk by chunk.

Never holds the upload in memory and never reads more than the limit: the Content-Length header
is checked before the first byte is read, and the bytes are counted as they arrive (a chunked
body has no Content-Length), so a too-large upload is answered 413 at once. The file part's
name is validated as soon as its headers arrive (traversal, NUL and control characters,
non-UTF-8), and its first bytes are sniffed before the rest is read: a wrong type is refused
without spooling the whole file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from polydub.api.errors import ApiError, PayloadTooLarge, UnsupportedMediaType
from polydub.errors import InvalidInput
from polydub.media.sniff import SNIFF_BYTES, MediaFormat, sniff

FILE_FIELD = "file"
MAX_FIELDS = 64
MAX_FIELD_BYTES = 8 * 1024
# The job's metadata is a JSON object of up to 16 KiB (compact): its text may be laid out wider.
MAX_METADATA_FIELD_BYTES = 32 * 1024
# Room for the multipart framing and the small fields around the file.
ENVELOPE_SLACK = 256 * 1024


class MalformedRequest(ApiError):
    code = "malformed_multipart"
    http_status = 400


class InvalidFilename(ApiError):
    code = "invalid_filename"
    http_status = 400


_FILENAME_STAR = re.compile(rb"filename\*\s*=\s*([^;]+)", re.IGNORECASE)


def validate_filename(raw: bytes) -> str | None:
    """The user's file name as metadata, or a 400: it never becomes part of a path or key."""
    if not raw:
        return None
    try:
        name = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidFilename("the file name is not valid UTF-8") from None
    if len(raw) > 255:
        raise InvalidFilename("the file name is longer than 255 bytes")
    if any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co"} for c in name):
        raise InvalidFilename("the file name holds control or invisible characters (NUL, ...)")
    if "/" in name or "\\" in name:
        raise InvalidFilename("the file name holds a path separator")
    if name.strip() in {".", ".."} or name.startswith(".."):
        raise InvalidFilename("the file name is a relative path component")
    if name != name.strip():
        raise InvalidFilename("the file name has leading or trailing white space")
    return name


def _filename_from_header(disposition: bytes, params: dict[bytes, bytes]) -> bytes | None:
    star = _FILENAME_STAR.search(disposition)
    if star:
        value = star[1].strip().strip(b'"')
        charset, _, rest = value.partition(b"'")
        _, _, encoded = rest.partition(b"'")
        if charset.lower() not in {b"utf-8", b"utf8"}:
            raise InvalidFilename("only UTF-8 is accepted in filename*")
        return unquote_to_bytes(encoded)
    return params.get(b"filename")


@dataclass
class Upload:
    fields: dict[str, list[str]] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    container: MediaFormat | None = None


class _State:
    """Collects parser callbacks; the file part is written straight to disk."""

    def __init__(self, spool: Path, max_file_bytes: int) -> None:
        self.spool = spool
        self.max_file_bytes = max_file_bytes
        self.upload = Upload()
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.part_name: str | None = None
        self.is_file = False
        self.value = bytearray()
        self.head = bytearray()
        self.out: BinaryIO | None = None
        self.finished = False

    # --- parser callbacks (synchronous; errors propagate out of parser.write)

    def on_part_begin(self) -> None:
        self.headers, self.part_name, self.is_file = {}, None, False
        self.value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        disposition = self.headers.get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        try:
            name = params.get(b"name", b"").decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequest("a form field name is not valid UTF-8") from None
        filename = _filename_from_header(disposition, params)
        self.part_name = name
        self.is_file = filename is not None or b"filename*" in disposition.lower()
        if not self.is_file:
            if len(self.upload.fields) >= MAX_FIELDS:
                raise MalformedRequest("too many form fields")
            return
        if name != FILE_FIELD:
            raise InvalidInput(
                f"unexpected file field {name!r}; send the media as {FILE_FIELD!r}",
                code="unknown_field",
            )
        if self.upload.path is not None:
            raise InvalidInput("send exactly one file", code="multiple_files")
        self.upload.filename = validate_filename(filename or b"")
        self.upload.path = self.spool / "source"
        self.out = self.upload.path.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self.is_file:
            self.value += chunk
            limit = MAX_METADATA_FIELD_BYTES if self.part_name == "metadata" else MAX_FIELD_BYTES
            if len(self.value) > limit:
                raise PayloadTooLarge(f"form field {self.part_name!r} is too long")
            return
        assert self.out is not None
        self.upload.size += len(chunk)
        if self.upload.size > self.max_file_bytes:
            raise too_large(self.max_file_bytes)
        if self.upload.container is None:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
            if len(self.head) >= SNIFF_BYTES:
                self.upload.container = sniff(bytes(self.head))
        self.out.write(chunk)

    def on_part_end(self) -> None:
        if self.is_file:
            if self.out is not None:
                self.out.close()
                self.out = None
            if self.upload.container is None:
                if not self.head:
                    raise InvalidInput("the uploaded file is empty", code="empty_file")
                self.upload.container = sniff(bytes(self.head))
            return
        try:
            text = bytes(self.value).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequest(f"form field {self.part_name!r} is not valid UTF-8") from None
        self.upload.fields.setdefault(self.part_name or "", []).append(text)

    def on_end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 for a file over ``limit`` bytes, however it arrives (form or presigned upload)."""
    return PayloadTooLarge(
        f"the upload is larger than {limit} bytes; use a presigned upload or a smaller file",
        detail={"max_bytes": limit},
    )


def check_content_length(value: str | None, max_file_bytes: int) -> None:
    """413 from the header alone, before a byte of the body is read."""
    if value is None:
        return
    try:
        length = int(value)
    except ValueError:
        raise MalformedRequest("Content-Length is not a number") from None
    if length > max_file_bytes + ENVELOPE_SLACK:
        raise too_large(max_file_bytes)


def boundary_of(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise UnsupportedMediaType(
            "send multipart/form-data with a 'file' part, or JSON after a presigned upload",
            code="unsupported_content_type",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedRequest("multipart/form-data without a boundary")
    return boundary


async def receive(
    body: AsyncIterator[bytes], boundary: bytes, spool: Path, max_file_bytes: int
) -> Upload:
    """Parse a multipart body into ``spool``; raises before reading past any limit."""
    state = _State(spool, max_file_bytes)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": state.on_part_begin,
            "on_part_data": state.on_part_data,
            "on_part_end": state.on_part_end,
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_headers_finished": state.on_headers_finished,
            "on_end": state.on_end,
        },
    )
    received = 0
    limit = max_file_bytes + ENVELOPE_SLACK
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limit:
                raise too_large(max_file_bytes)
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedRequest(f"the multipart body is malformed: {exc}") from None
    finally:
        state.close()
    if not state.finished:
        raise MalformedRequest("the multipart body ended early")
    if state.upload.path is None:
        raise InvalidInput(f"no {FILE_FIELD!r} part in the form", code="missing_file")
    return state.upload
