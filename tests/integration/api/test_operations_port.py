"""``polydub api serve`` with POLYDUB_API_METRICS_PORT: /metrics and the detailed readiness answer
only on the operations port; the public port keeps the API, liveness and a bare readiness."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from polydub.settings import Settings
from polydub.stack.servers import settings_env
from tests.integration.api.helpers import Served, free_port


@dataclass(frozen=True)
class Ports:
    public: str
    operations: str


def _serve(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-m", "polydub.cli", "api", "serve", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def ports(api_settings: Settings, api: Served) -> Iterator[Ports]:
    # ``api`` (the in-process API) brings the servers up and the schema migrated.
    settings = api_settings.model_copy(
        update={"api_port": free_port(), "api_metrics_port": free_port(), "api_run_workers": False}
    )
    process = _serve(settings)
    urls = Ports(
        f"http://127.0.0.1:{settings.api_port}", f"http://127.0.0.1:{settings.api_metrics_port}"
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                if httpx.get(f"{urls.operations}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        yield urls
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_metrics_and_details_only_on_the_operations_port(ports: Ports) -> None:
    assert httpx.get(f"{ports.public}/metrics").status_code == 404
    metrics = httpx.get(f"{ports.operations}/metrics")
    assert metrics.status_code == 200 and "polydub_http_requests" in metrics.text

    detailed = httpx.get(f"{ports.operations}/health/ready", timeout=10).json()
    assert detailed["status"] == "ready"
    assert set(detailed["checks"]) == {"postgres", "nats", "s3", "triton"}
    bare = httpx.get(f"{ports.public}/health/ready", timeout=10).json()
    assert bare == {"status": "ready", "checks": {}}
    assert httpx.get(f"{ports.public}/health/live").json()["status"] == "ok"


def test_the_api_is_only_on_the_public_port(ports: Ports) -> None:
    public = httpx.get(f"{ports.public}/api/v1/jobs")
    assert public.status_code == 401  # the API answers: a key is needed
    assert httpx.get(f"{ports.operations}/api/v1/jobs").status_code == 404
    assert httpx.get(f"{ports.operations}/").status_code == 404  # nor the web page


def test_several_workers_with_an_operations_port_is_refused(api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"api_metrics_port": free_port()})
    process = _serve(settings, "--workers", "2")
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 2
    assert "one worker per pod" in output
    assert "Traceback" not in output
