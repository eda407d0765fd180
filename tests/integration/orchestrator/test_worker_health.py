"""Worker health that means something (issue #15, item 5): a real worker process loop on the real
stack; /health/ready answers 200 only while NATS, its JetStream consumer and Triton answer."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polydub.infra.queue import connect
from polydub.orchestrator.main import run_worker
from polydub.settings import Settings
from polydub.stack import Stack
from tests.conftest import free_port
from tests.integration.api.helpers import wait_for

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, workdir: Path) -> AsyncIterator[str]:
    """A worker on ``settings`` (own stream); yields its operations server's base URL."""
    task = asyncio.create_task(run_worker(settings, workdir=workdir, handle_signals=False))
    base = f"http://127.0.0.1:{settings.worker_metrics_port}"
    try:
        yield base
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        nc = await connect(settings)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(settings.jobs_stream)
        await nc.close()


def _worker_settings(stack_settings: Settings, **update: Any) -> Settings:
    stream = f"HEALTH_{uuid.uuid4().hex[:8]}"
    return stack_settings.model_copy(
        update={
            "jobs_stream": stream,
            "jobs_subject": f"{stream}.jobs",
            "worker_metrics_host": "127.0.0.1",
            "worker_metrics_port": free_port(),
            **update,
        }
    )


async def _ready(client: httpx.AsyncClient, base: str, status: int) -> dict[str, Any]:
    """The readiness answer once it is ``status`` (the worker connects in the background)."""

    async def answered() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.TransportError):
            response = await client.get(f"{base}/health/ready")
            if response.status_code == status and "checks" in response.json():
                body: dict[str, Any] = response.json()
                return body
        return None

    found: dict[str, Any] = await wait_for(answered, within=60, interval=0.2)
    return found


async def test_ready_while_nats_the_consumer_and_triton_answer(
    services: Stack, triton_server: Stack, stack_settings: Settings, tmp_path: Path
) -> None:
    settings = _worker_settings(stack_settings)
    async with running_worker(settings, tmp_path) as base, httpx.AsyncClient(timeout=10) as client:
        body = await _ready(client, base, 200)
        assert body["status"] == "ready"
        assert {name: check["ok"] for name, check in body["checks"].items()} == {
            "nats": True,
            "consumer": True,
            "triton": True,
            "worker": True,
        }
        assert (await client.get(f"{base}/health/live")).json() == {"status": "ok"}
        metrics = await client.get(f"{base}/metrics")
        assert metrics.status_code == 200 and "polydub_jobs_in_flight" in metrics.text
        assert (await client.get(f"{base}/nowhere")).status_code == 404

        # The consumer gone (a stream deleted under the worker): not ready, whatever else works.
        nc = await connect(settings)
        await nc.jetstream().delete_stream(settings.jobs_stream)
        await nc.close()
        broken = await _ready(client, base, 503)
        assert broken["checks"]["consumer"]["ok"] is False
        assert broken["checks"]["triton"]["ok"] is True
    # stopped: nothing answers any more
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{base}/health/live")


async def test_not_ready_while_triton_is_unreachable(
    services: Stack, stack_settings: Settings, tmp_path: Path
) -> None:
    settings = _worker_settings(stack_settings, triton_url=f"127.0.0.1:{free_port()}")
    async with running_worker(settings, tmp_path) as base, httpx.AsyncClient(timeout=10) as client:
        body = await _ready(client, base, 503)
        checks = body["checks"]
        assert body["status"] == "not_ready"
        assert checks["triton"]["ok"] is False and checks["triton"]["error"] == "not ready"
        assert checks["nats"]["ok"] and checks["consumer"]["ok"] and checks["worker"]["ok"]
        # alive all the same: the kubelet must not restart it for a dependency's outage
        assert (await client.get(f"{base}/health/live")).status_code == 200
