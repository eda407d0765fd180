"""Issue #13 item 7, the worker: it refuses to start without ffprobe/ffmpeg (one line, exit 2),
stages that end with their job or language are closed with the reason (never left 'running'),
and its operations port binds loopback unless the deployment opens it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from polydub.errors import InvalidInput
from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.servers import settings_env
from tests.conftest import free_port
from tests.integration.orchestrator.test_worker import (  # noqa: F401 (env: a fixture)
    Script,
    env,
    make_worker,
    running,
    stop,
    submit,
    wait_terminal,
)

pytestmark = pytest.mark.integration


def _worker(settings: Settings, **extra: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, **settings_env(settings), **extra}
    return subprocess.Popen(
        [sys.executable, "-m", "polydub.cli", "worker", "run"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("tool", ["FFPROBE", "FFMPEG"])
def test_a_worker_without_ffprobe_or_ffmpeg_refuses_to_start(
    tool: str, stack_settings: Settings, tmp_path: Path
) -> None:
    missing = str(tmp_path / tool.lower())
    process = _worker(stack_settings, **{f"POLYDUB_{tool}": missing})
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the worker needs ffmpeg and ffprobe")
    assert missing in lines[0] and "Traceback" not in output


def _listening(port: int) -> set[str]:
    """The local addresses listening on ``port`` (IPv4), from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_operations_port_binds_loopback_by_default(
    stack_settings: Settings, services: Stack
) -> None:
    port = free_port()
    settings = stack_settings.model_copy(update={"worker_metrics_port": port})
    process = _worker(settings)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert process.poll() is None, process.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "the worker's operations port never opened"
            time.sleep(0.2)
        assert _listening(port) == {"127.0.0.1"}
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.communicate(timeout=60)


async def test_failed_stages_are_closed_with_the_reason(env, db_pool, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    # a language's stage fails: that stage row is failed with the language's reason
    script = Script(fail={("translate", "spa"): [InvalidInput("no voice", code="no_voice")]})
    worker = make_worker(env, db_pool, script, tmp_path)
    task = await running(worker)
    one = await submit(env, db_pool, ["fra", "spa"])
    await wait_terminal(db_pool, one)
    # a job-scope stage fails: the job fails and so does the stage, with the job's reason
    script.fail[("slow", "")] = [InvalidInput("unreadable", code="corrupt_media")]
    two = await submit(env, db_pool, ["fra"])
    job = await wait_terminal(db_pool, two)
    await stop(worker, task)
    assert job["status"] == "failed" and job["error_code"] == "corrupt_media"

    async def stages(job_id: object) -> dict[tuple[str, str], asyncpg.Record]:
        rows = await db_pool.fetch(
            "SELECT stage, language, status, error_code, error_message, finished_at"
            " FROM job_stages WHERE job_id = $1",
            job_id,
        )
        return {(r["stage"], r["language"]): r for r in rows}

    first = await stages(one)
    failed = first[("translate", "spa")]
    assert (failed["status"], failed["error_code"], failed["error_message"]) == (
        "failed",
        "no_voice",
        "no voice",
    )
    assert failed["finished_at"] is not None
    assert first[("translate", "fra")]["status"] == "succeeded"
    second = await stages(two)
    assert (second[("slow", "")]["status"], second[("slow", "")]["error_code"]) == (
        "failed",
        "corrupt_media",
    )
    for rows in (first, second):
        assert all(r["status"] != "running" for r in rows.values()), rows
