"""A local HTTP server for source_url tests: media, redirects and bodies over a size cap."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REDIRECTS = {
    "/to-private": "http://10.0.0.1/clip",
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-clip": "/clip.wav",
    "/loop": "/loop",
}


@dataclass(frozen=True)
class SourceServer:
    url: str  # http://127.0.0.1:PORT
    hits: list[str]  # the paths requested, in order


def _handler(clip: bytes, hits: list[str], big: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path in REDIRECTS:
                self.send_response(302)
                self.send_header("Location", REDIRECTS[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/clip.wav":
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(clip)))
                self.end_headers()
                self.wfile.write(clip)
            elif self.path == "/endless":  # no length: the cap must stop it mid-stream
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):
                    for _ in range(big // 65536 + 2):
                        self.wfile.write(b"\0" * 65536)
            elif self.path == "/declared-big":
                self.send_response(200)
                self.send_header("Content-Length", str(big + 1))
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


@contextlib.contextmanager
def serving(clip: Path, *, big: int) -> Iterator[SourceServer]:
    """Serve ``clip`` at /clip.wav on 127.0.0.1; /endless streams more than ``big`` bytes."""
    hits: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(clip.read_bytes(), hits, big))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SourceServer(f"http://127.0.0.1:{server.server_address[1]}", hits)
    finally:
        server.shutdown()
        server.server_close()
