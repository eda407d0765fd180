"""Bad input: each case is a clear 4xx with a machine-readable code, and nothing is stored (no
S3 object, no job row, no outbox row)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from polydub.api.auth import NewKey
from polydub.infra.storage import ObjectStore
from tests.integration.api.conftest import MAX_UPLOAD
from tests.integration.api.helpers import Media, Served, multipart_body

pytestmark = pytest.mark.integration

GOOD_FIELDS = [("target_languages", "spa"), ("source_language", "eng")]


@dataclass
class Footprint:
    jobs: int
    outbox: int
    inputs: int


async def footprint(pool: asyncpg.Pool, store: ObjectStore, key: NewKey) -> Footprint:
    return Footprint(
        jobs=await pool.fetchval("SELECT count(*) FROM jobs WHERE owner_id = $1", key.id),
        outbox=await pool.fetchval("SELECT count(*) FROM outbox"),
        inputs=len(await store.list_keys("inputs/")),
    )


def _read(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture
async def keyed(api: Served, fresh_key: NewKey) -> httpx.AsyncClient:
    client = httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {fresh_key.key}"}, timeout=20
    )
    return client


CASES = [
    # name, file source, fields, filename, status, code
    ("wrong type: ELF named .mp4", "elf", GOOD_FIELDS, b"clip.mp4", 415, "unsupported_media_type"),
    ("wrong type: PNG", "png", GOOD_FIELDS, b"clip.mp4", 415, "unsupported_media_type"),
    ("HLS playlist", "m3u8", GOOD_FIELDS, b"clip.mp4", 415, "playlist_not_allowed"),
    ("concat list", "concat", GOOD_FIELDS, b"list.mp4", 415, "playlist_not_allowed"),
    ("no audio stream", "no_audio", GOOD_FIELDS, b"clip.mp4", 422, "no_audio_stream"),
    ("truncated media", "truncated", GOOD_FIELDS, b"clip.mp4", 422, "corrupt_media"),
    ("mp4 magic, garbage body", "fake_mp4", GOOD_FIELDS, b"clip.mp4", 422, "corrupt_media"),
    ("empty file", "empty", GOOD_FIELDS, b"clip.mp4", 422, "empty_file"),
    (
        "unsupported language",
        "clip",
        [("target_languages", "xxx")],
        b"clip.mp4",
        422,
        "unsupported_language",
    ),
    (
        "source equals target",
        "clip",
        [("target_languages", "spa"), ("source_language", "spa")],
        b"clip.mp4",
        422,
        "same_language",
    ),
    ("unknown field", "clip", [*GOOD_FIELDS, ("colour", "red")], b"clip.mp4", 422, "unknown_field"),
    (
        "start past the end",
        "clip",
        [*GOOD_FIELDS, ("start_time", "5")],
        b"clip.mp4",
        422,
        "invalid_time_range",
    ),
    (
        "too long",
        "long",
        GOOD_FIELDS,
        b"clip.mp4",
        422,
        "media_too_long",
    ),
    (
        "too many targets",
        "clip",
        [("target_languages", "spa,fra,deu,ita,por,nld,pol,ron,swe,fin,hun")],
        b"clip.mp4",
        422,
        "too_many_target_languages",
    ),
    ("no target language", "clip", [], b"clip.mp4", 422, "validation_error"),
    (
        "bad option type",
        "clip",
        [*GOOD_FIELDS, ("num_speakers", "many")],
        b"c.mp4",
        422,
        "validation_error",
    ),
    ("traversal", "clip", GOOD_FIELDS, b"../../etc/passwd", 400, "invalid_filename"),
    ("windows traversal", "clip", GOOD_FIELDS, b"..\\..\\boot.ini", 400, "invalid_filename"),
    ("NUL in name", "clip", GOOD_FIELDS, b"clip\x00.sh", 400, "invalid_filename"),
    ("non-UTF-8 name", "clip", GOOD_FIELDS, b"\xff\xfeclip.mp4", 400, "invalid_filename"),
    ("control char in name", "clip", GOOD_FIELDS, b"clip\x1b[31m.mp4", 400, "invalid_filename"),
    ("dot-dot name", "clip", GOOD_FIELDS, b"..", 400, "invalid_filename"),
]


def _payload(kind: str, media: Media) -> bytes:
    if kind == "clip":
        return _read(media.clip)
    if kind == "long":
        return _read(media.long_clip)
    if kind == "no_audio":
        return _read(media.no_audio)
    if kind == "truncated":
        return _read(media.truncated)
    return {
        "elf": b"\x7fELF\x02\x01\x01" + b"\0" * 200,
        "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 200,
        "m3u8": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nfile:///etc/passwd\n",
        "concat": b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        "fake_mp4": b"\0\0\0\x18ftypisom\0\0\0\0isommp41" + b"\x42" * 4000,
        "empty": b"",
    }[kind]


@pytest.mark.parametrize(
    ("name", "kind", "fields", "filename", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
async def test_rejected_and_nothing_stored(
    keyed: httpx.AsyncClient,
    fresh_key: NewKey,
    media: Media,
    db_pool: asyncpg.Pool,
    store: ObjectStore,
    name: str,
    kind: str,
    fields: list[tuple[str, str]],
    filename: bytes,
    status: int,
    code: str,
) -> None:
    before = await footprint(db_pool, store, fresh_key)
    body, content_type = multipart_body(fields, _payload(kind, media), filename)
    try:
        response = await keyed.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
    finally:
        await keyed.aclose()
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert await footprint(db_pool, store, fresh_key) == before


async def test_wrong_content_type_and_missing_file(
    keyed: httpx.AsyncClient, fresh_key: NewKey, db_pool: asyncpg.Pool, store: ObjectStore
) -> None:
    before = await footprint(db_pool, store, fresh_key)
    try:
        plain = await keyed.post(
            "/api/v1/jobs", content=b"hello", headers={"Content-Type": "text/plain"}
        )
        assert plain.status_code == 415
        assert plain.json()["error"]["code"] == "unsupported_content_type"
        body, content_type = multipart_body(GOOD_FIELDS, None)
        no_file = await keyed.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
        assert no_file.status_code == 422 and no_file.json()["error"]["code"] == "missing_file"
        body, content_type = multipart_body(GOOD_FIELDS, b"x", b"a.mp4", file_field=b"video")
        wrong = await keyed.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "unknown_field"
        broken = await keyed.post(
            "/api/v1/jobs",
            content=b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\nno end',
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "malformed_multipart"
    finally:
        await keyed.aclose()
    assert await footprint(db_pool, store, fresh_key) == before


async def _raw_request(port: int, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request over a plain socket, stopping as soon as the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
                break
            writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def test_too_large_is_413_before_the_body_is_read(
    api: Served, fresh_key: NewKey, db_pool: asyncpg.Pool, store: ObjectStore
) -> None:
    before = await footprint(db_pool, store, fresh_key)
    boundary = uuid.uuid4().hex
    # Content-Length says 50 MB; only 1 KB is ever sent, and the answer comes anyway.
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {fresh_key.key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = await _raw_request(api.port, head, [b"-" * 1024])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"payload_too_large"' in answer
    assert await footprint(db_pool, store, fresh_key) == before


async def test_chunked_upload_over_the_limit_is_cut_off(
    api: Served, fresh_key: NewKey, media: Media, db_pool: asyncpg.Pool, store: ObjectStore
) -> None:
    before = await footprint(db_pool, store, fresh_key)
    body, content_type = multipart_body(
        GOOD_FIELDS, _read(media.clip) + b"\0" * (MAX_UPLOAD * 3), b"big.mp4"
    )
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {fresh_key.key}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    step = 32 * 1024
    chunks = [
        f"{len(body[i : i + step]):x}\r\n".encode() + body[i : i + step] + b"\r\n"
        for i in range(0, len(body), step)
    ]
    answer = await _raw_request(api.port, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"payload_too_large"' in answer
    assert await footprint(db_pool, store, fresh_key) == before
