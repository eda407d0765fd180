"""Rough edges a new user hit (issue #14, item 6) that need no server: -h and --version, an
unreachable --api, the ``stack`` tables and messages, the locustfile's defaults, and the client's
multipart body from a file object."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from polydub.cli import app, main
from polydub.cli.stack import _table, stopped_message
from polydub.client._common import MultipartFile
from polydub.stack.stack import ServerStatus
from polydub.version import __version__

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_short_help_everywhere_and_version() -> None:
    runner = CliRunner()
    for argv in (["-h"], ["jobs", "-h"], ["jobs", "show", "-h"], ["stack", "down", "-h"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        assert "Usage:" in result.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"polydub {__version__}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens once the socket is closed


def test_unreachable_api_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(sys, "argv", ["polydub", "jobs", "list", "--api", url, "--key", "pd_x"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach the API at {url}: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def _render(statuses: list[ServerStatus], width: int = 70) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(_table(statuses))
    return console.export_text()


def test_stack_status_has_no_empty_column_and_keeps_urls_whole() -> None:
    long_url = "postgresql://polydub@127.0.0.1:54321/polydub"
    statuses = [
        ServerStatus("api", True, True, 4242, {"url": long_url, "metrics": "http://127.0.0.1:9"}),
        ServerStatus("nats", False, False, None, {"client": "nats://127.0.0.1:4222"}),
    ]
    text = _render(statuses, width=60)
    assert "time to healthy" not in text  # never known to ``status``
    assert any(f"url={long_url}" in line for line in text.splitlines())
    assert "nats://127.0.0.1:4222" in text
    after_up = _render([ServerStatus("api", True, True, 4242, {"url": "http://x"}, 1.25)])
    assert "time to healthy" in after_up and "1.2s" in after_up


def test_stack_down_names_what_it_stopped() -> None:
    api = ServerStatus("api", True, True, 10, {})
    worker = ServerStatus("worker", True, False, 11, {})
    nats = ServerStatus("nats", False, False, None, {})
    assert stopped_message([api]) == "stopped api"
    assert stopped_message([api, worker, nats]) == "stopped api, worker; nats was not running"
    assert stopped_message([nats]) == "nats was not running"


def test_multipart_body_from_a_binary_file_object(tmp_path: Path) -> None:
    data = bytes(range(256)) * 2000
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    from_path = MultipartFile(path, [("target_languages", "spa")])
    stream = io.BytesIO(b"skipped" + data)
    stream.seek(7)  # sent from where it stands
    from_stream = MultipartFile(stream, [("target_languages", "spa")], filename="clip.mp4")
    body = b"".join(from_stream)
    assert from_stream.size == len(data) and len(body) == from_stream.length
    # The same bytes as from the path, but for the random boundary.
    boundary = from_stream.content_type.partition("boundary=")[2].encode()
    other = from_path.content_type.partition("boundary=")[2].encode()
    assert body.replace(boundary, other) == b"".join(from_path)
    assert b'filename="clip.mp4"' in body and not stream.closed
    with pytest.raises(TypeError, match="binary mode"):
        MultipartFile(io.StringIO("text"), [])  # type: ignore[arg-type]


def _locust(*args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYDUB_")}
    if key:
        env["POLYDUB_API_KEY"] = key
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]
    return subprocess.run(
        [*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_locustfile_runs_with_a_key_and_says_what_is_missing() -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    headless = ["--host", host, "--headless", "-u", "1", "-r", "1", "-t", "2s", "--only-summary"]
    missing = _locust(*headless, key=None)
    assert missing.returncode == 2
    assert "error: no API key: set POLYDUB_API_KEY" in missing.stderr
    assert "KeyError" not in missing.stderr
    ran = _locust(*headless, "--exit-code-on-error", "0", key="pd_000000000000_x")
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-2000:]
    assert "POST /jobs" in output and "Traceback" not in output  # ran, the host refused


def test_a_foreseeable_error_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "polydub.cli", "stack", "down", "--only", "bogus"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown server(s): bogus; known: postgres, nats, s3, triton, api, worker"
    ]
