"""Issue #13 item 6: slow clients cannot hold a connection (and a spool folder) for ever. A raw
socket client against the API served as ``polydub api serve`` serves it (the h11 protocol with
the header deadline, the body-rate middleware), with deadlines of about a second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import websockets

from polydub.api.app import create_app
from polydub.api.auth import NewKey
from polydub.api.slow_clients import with_header_timeout
from polydub.settings import Settings
from tests.conftest import scratch_dir
from tests.integration.api.helpers import Media, Served, multipart_body

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 1.0
BODY_GRACE = 1.0
MIN_RATE = 1000  # bytes a second
PATIENCE = 8.0  # what the test waits at most for the server to close: far above the deadlines


@pytest.fixture(scope="module")
def slow_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(
        update={
            "api_run_workers": False,
            "api_header_timeout_seconds": HEADER_TIMEOUT,
            "api_body_timeout_seconds": BODY_GRACE,
            "api_body_min_bytes_per_second": MIN_RATE,
            "api_tmp_dir": scratch_dir("polydub-slow-spool-"),
        }
    )


@pytest.fixture(scope="module")
async def served(slow_settings: Settings, db_pool: asyncpg.Pool) -> AsyncIterator[Served]:
    app = Served(create_app(slow_settings), http=with_header_timeout(HEADER_TIMEOUT))
    await app.start()
    yield app
    await app.stop()


async def _open(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", served.port)


async def _drip(writer: asyncio.StreamWriter, data: bytes, chunk: int, every: float) -> None:
    """Send ``data`` ``chunk`` bytes at a time, ``every`` seconds apart, until the server hangs
    up (that is the point)."""
    with contextlib.suppress(ConnectionError):
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
            await writer.drain()
            await asyncio.sleep(every)


async def _closed_within(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), limit):
            received += chunk
    return received, time.monotonic() - started


async def test_headers_at_a_byte_every_half_second_are_cut_off(served: Served) -> None:
    reader, writer = await _open(served)
    request = b"GET /api/v1/languages HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    dripping = asyncio.create_task(_drip(writer, request, 1, 0.5))
    received, seconds = await _closed_within(reader, PATIENCE)
    dripping.cancel()
    writer.close()
    assert received.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT * 0.9 <= seconds <= HEADER_TIMEOUT + 2.0


async def test_an_idle_connection_and_an_idle_keep_alive_are_closed(served: Served) -> None:
    reader, writer = await _open(served)  # opens, never sends a byte
    received, seconds = await _closed_within(reader, PATIENCE)
    assert received.startswith(b"HTTP/1.1 408 ") and seconds <= HEADER_TIMEOUT + 2.0
    writer.close()

    # A prompt client keeps its connection across requests; then the next request's headers
    # have their own deadline, counted from the previous response.
    reader, writer = await _open(served)
    for _ in range(2):
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.write(b"GET /health/live HTTP/1.1\r\n")  # and then nothing more
    await writer.drain()
    received, seconds = await _closed_within(reader, PATIENCE)
    assert received.startswith(b"HTTP/1.1 408 ") and seconds <= HEADER_TIMEOUT + 2.0
    writer.close()


async def test_an_upload_at_50_bytes_a_second_is_refused_and_its_spool_removed(
    served: Served, slow_settings: Settings, fresh_key: NewKey, media: Media
) -> None:
    body, content_type = multipart_body(
        [("target_languages", "spa")], await asyncio.to_thread(media.clip.read_bytes)
    )
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fresh_key.key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await _open(served)
    writer.write(head)
    await writer.drain()
    dripping = asyncio.create_task(_drip(writer, body, 10, 0.2))  # 50 B/s
    received, seconds = await _closed_within(reader, PATIENCE)
    dripping.cancel()
    writer.close()
    status, _, rest = received.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), received[:300]
    assert b"connection: close" in rest.lower() and b'"code":"request_timeout"' in rest
    # the average fell below MIN_RATE just after the grace: about BODY_GRACE + 50 / MIN_RATE s
    assert seconds <= BODY_GRACE + 2.0
    assert slow_settings.api_tmp_dir is not None
    assert list(slow_settings.api_tmp_dir.iterdir()) == []  # the spool folder went with it


async def test_a_prompt_upload_is_unaffected(
    served: Served, fresh_key: NewKey, media: Media
) -> None:
    body, content_type = multipart_body(
        [("target_languages", "spa")], await asyncio.to_thread(media.clip.read_bytes)
    )
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fresh_key.key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await _open(served)
    writer.write(head)
    # a pause within the grace, then the rest at once: the average counts from the start
    await asyncio.sleep(BODY_GRACE * 0.6)
    writer.write(body)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 20)
    writer.close()
    assert status.startswith(b"HTTP/1.1 202 "), status


async def test_a_websocket_outlives_the_header_deadline(
    served: Served, fresh_key: NewKey, media: Media
) -> None:
    body, content_type = multipart_body(
        [("target_languages", "spa")], await asyncio.to_thread(media.clip.read_bytes)
    )
    headers = {"Authorization": f"Bearer {fresh_key.key}"}
    async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=20) as client:
        created = await client.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": content_type}
        )
    assert created.status_code == 202, created.text
    url = f"ws://127.0.0.1:{served.port}/api/v1/jobs/{created.json()['id']}/progress"
    async with websockets.connect(url, additional_headers=headers) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["type"] == "state" and first["status"] == "queued"
        # the upgraded connection is the WebSocket's now: no 408 after the header deadline
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), HEADER_TIMEOUT * 2.5)
        assert ws.state is websockets.protocol.State.OPEN
