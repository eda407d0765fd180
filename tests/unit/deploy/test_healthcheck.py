"""The image HEALTHCHECK: a 2xx answer is healthy; an error status or no answer is not."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from polydub.deploy import healthcheck

pytestmark = pytest.mark.unit


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health/live" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_check_answers_by_status(server: str) -> None:
    assert healthcheck.check(f"{server}/health/live") is True
    assert healthcheck.check(f"{server}/metrics") is False  # 503
    assert healthcheck.check("http://127.0.0.1:1/health/live", timeout=1) is False
    assert healthcheck.check("not a url") is False


def test_module_exit_code_follows_healthcheck_url(server: str) -> None:
    def run(url: str) -> int:
        env = {"HEALTHCHECK_URL": url, "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [sys.executable, "-m", "polydub.deploy.healthcheck"], env=env, timeout=20, check=False
        ).returncode

    assert run(f"{server}/health/live") == 0
    assert run(f"{server}/metrics") == 1
