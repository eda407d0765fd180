"""A GET answered "200" with a body that is not the object's reads as S3 unavailable, never as data.

The restart drill (tests/integration/faults/test_s3_restart_errors.py) once saw a JuiceFS gateway
going down answer a GET of a 100 kB object with an empty body and no error; the job would have
gone on with an empty input. A local server replays such answers over a real connection.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from polydub.errors import ServiceUnavailable
from polydub.infra.storage import ObjectStore
from polydub.settings import Settings

pytestmark = pytest.mark.unit

BODY = b"x" * 1000
# What the server answers for each key: (headers, body). Only "whole" is a proper answer.
ANSWERS: dict[str, tuple[dict[str, str], bytes]] = {
    "whole": ({"ETag": '"abc"', "Content-Length": str(len(BODY))}, BODY),
    "bare": ({"Content-Length": "0"}, b""),  # the gateway going down: no ETag, no body
    "unsized": ({"ETag": '"abc"', "Connection": "close"}, b""),  # no length, body to the close
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        headers, body = ANSWERS[self.path.rsplit("/", 1)[-1].split("?")[0]]
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        if "Content-Length" not in headers:
            self.close_connection = True


@pytest.fixture(scope="module")
def store() -> Iterator[ObjectStore]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ObjectStore(Settings(s3_endpoint=f"127.0.0.1:{server.server_address[1]}"))
    finally:
        server.shutdown()
        server.server_close()


async def test_a_whole_answer_is_read(store: ObjectStore, tmp_path: Path) -> None:
    assert await store.get_bytes("whole") == BODY
    reader = await store.open_read("whole")
    assert b"".join([block async for block in reader.chunks(300)]) == BODY
    assert (await store.download("whole", tmp_path / "whole")).read_bytes() == BODY


@pytest.mark.parametrize("key", ["bare", "unsized"])
async def test_an_answer_without_etag_or_length_is_unavailable(
    store: ObjectStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(ServiceUnavailable) as got:
        await store.get_bytes(key)
    assert got.value.retryable and got.value.code == "s3_unavailable"
    with pytest.raises(ServiceUnavailable):
        await store.open_read(key)
    with pytest.raises(ServiceUnavailable):
        await store.download(key, tmp_path / key)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # no partial file is left
