"""`polydub stack up|status|down` as a user runs it: every server healthy, nothing left behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, scratch_dir

pytestmark = pytest.mark.integration


def _polydub(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polydub.cli", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=180,
        check=False,
    )


def _processes_under(path: Path) -> list[str]:
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if str(path) in line and "ps -eo" not in line]


# The four servers; the API and the worker come up with them in tests/e2e/test_cli_dub.py.
SERVERS = ["--only", "postgres", "--only", "nats", "--only", "s3", "--only", "triton"]


def test_stack_up_status_down_leaves_no_process() -> None:
    # Under /tmp itself: PostgreSQL runs unprivileged under root and must traverse the path.
    tmp_path = scratch_dir("polydub-cli-")
    tmp_path.chmod(0o755)
    env = {
        **os.environ,
        "POLYDUB_STACK_DIR": str(tmp_path / "stack"),
        "POLYDUB_MODEL_REPOSITORY": str(tmp_path / "models"),
        "COLUMNS": "200",
    }
    for name in (
        "POSTGRES_PORT",
        "NATS_PORT",
        "NATS_MONITOR_PORT",
        "S3_PORT",
        "TRITON_HTTP_PORT",
        "TRITON_GRPC_PORT",
        "TRITON_METRICS_PORT",
    ):
        env[f"POLYDUB_{name}"] = str(free_port())
    try:
        up = _polydub(["stack", "up", *SERVERS], env)
        assert up.returncode == 0, up.stdout + up.stderr
        for server in ("postgres", "nats", "s3", "triton"):
            assert server in up.stdout
        status = _polydub(["stack", "status", *SERVERS], env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("│ healthy ") == 4
        assert len(_processes_under(tmp_path)) >= 4
    finally:
        down = _polydub(["stack", "down"], env)
    assert down.returncode == 0, down.stderr
    assert _processes_under(tmp_path) == []
    after = _polydub(["stack", "status", *SERVERS], env)
    assert after.returncode == 1 and after.stdout.count("│ stopped ") == 4


def test_a_server_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    busy = free_port()
    env = {
        **os.environ,
        "POLYDUB_STACK_DIR": str(tmp_path / "stack"),
        "POLYDUB_NATS_PORT": str(busy),
        "POLYDUB_NATS_MONITOR_PORT": str(free_port()),
        "COLUMNS": "200",
    }
    import socket

    with socket.socket() as blocker:  # something else holds NATS's port
        blocker.bind(("127.0.0.1", busy))
        blocker.listen()
        result = _polydub(["stack", "up", "--only", "nats"], env)
        _polydub(["stack", "down", "--only", "nats"], env)
    assert result.returncode == 1
    assert "nats exited before it became healthy" in result.stdout
    assert "address already in use" in result.stdout.lower()
