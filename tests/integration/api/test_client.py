"""``polydub.client`` against the real API (uvicorn on the session's stack).

The orchestrator is stood in for by ``FakeWorker`` (it writes the rows and publishes progress as
the orchestrator does), so a job moves on exactly when the test says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from polydub.client import ApiError, AsyncClient, Client, JobEvent, JobStatus
from polydub.infra.storage import ObjectStore
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import FakeWorker, Media, Served, wait_for

pytestmark = pytest.mark.integration

VIDEO = b"\x00\x00\x00\x18ftypmp42 dubbed video bytes" * 100
SRT = b"1\n00:00:00,000 --> 00:00:01,000\nHola\n"


async def test_async_client_submits_follows_and_downloads(
    api: Served,
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    uploads: list[tuple[int, int]] = []
    events: list[JobEvent] = []
    async with AsyncClient(api.url, clients.key_a.key) as client:
        languages = await client.languages()
        assert {lang.code for lang in languages.languages if lang.dub_target} == {"spa", "fra"}

        job = await client.create_job(
            media.clip,
            ["spa", "fra"],
            source_language="eng",
            num_speakers=2,
            on_progress=lambda sent, total: uploads.append((sent, total)),
        )
        size = media.clip.stat().st_size
        assert job.status == "queued" and job.input.filename == "clip.mp4"
        assert job.options["num_speakers"] == 2 and sorted(job.target_languages) == ["fra", "spa"]
        assert uploads[0] == (0, size) and uploads[-1] == (size, size)

        waiting = asyncio.create_task(client.wait(job.id, on_event=events.append, timeout=30))
        await worker.claim(job.id)
        await worker.progress(job.id, "transcribe", 0.4, 12.0)
        await wait_for(lambda: _has(events, "progress"))  # followed live, not read at the end
        assert not waiting.done()
        await worker.finish_target(
            job.id,
            "spa",
            "succeeded",
            store,
            {"dubbed_video": (VIDEO, "video/mp4"), "subtitles_srt": (SRT, "application/x-subrip")},
        )
        await worker.finish_target(job.id, "fra", "failed", store, {})
        await worker.finish_job(job.id, "succeeded")
        done = await waiting

        assert done.status == "succeeded"
        assert {t.language: t.status for t in done.targets} == {"spa": "succeeded", "fra": "failed"}
        assert [(e.type, e.language or e.stage or e.status) for e in events] == [
            ("state", "queued"),
            ("state", "running"),
            ("progress", "transcribe"),
            ("target", "spa"),
            ("target", "fra"),
            ("state", "succeeded"),
        ]
        assert [e.status for e in events if e.type == "target"] == ["succeeded", "failed"]
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert events[2].progress == pytest.approx(0.4) and events[2].eta_seconds == 12.0
        assert events[-1].terminal

        seen: list[tuple[str, str, int, int]] = []
        written = await client.download_outputs(
            job.id, tmp_path / "out", on_progress=lambda *a: seen.append(a)
        )
        assert list(written) == ["spa"]  # the failed language has nothing to download
        by_name = {p.name: p for p in written["spa"]}
        assert by_name == {
            "clip.spa.mp4": tmp_path / "out" / "spa" / "clip.spa.mp4",
            "clip.spa.srt": tmp_path / "out" / "spa" / "clip.spa.srt",
        }
        assert by_name["clip.spa.mp4"].read_bytes() == VIDEO
        assert by_name["clip.spa.srt"].read_bytes() == SRT
        assert ("spa", "clip.spa.mp4", len(VIDEO), len(VIDEO)) in seen
        assert not list((tmp_path / "out").rglob("*.part"))

        only = await client.download_outputs(
            job.id, tmp_path / "srt", languages=["spa"], kinds=["subtitles_srt"]
        )
        assert [p.name for p in only["spa"]] == ["clip.spa.srt"]

        listed = [j.id async for j in client.iter_jobs(status=JobStatus.SUCCEEDED, page_size=1)]
        assert job.id in listed


async def test_sync_client_idempotency_cancel_and_errors(
    api: Served, clients: Clients, media: Media
) -> None:
    def run() -> dict[str, Any]:
        result: dict[str, Any] = {}
        with Client(api.url, clients.key_b.key) as client:
            key = str(uuid.uuid4())
            first = client.create_job(media.clip, "spa", idempotency_key=key)
            again = client.create_job(media.clip, "spa", idempotency_key=key)
            result["same"] = first.id == again.id
            result["cancelled"] = client.cancel_job(first.id).status
            result["again"] = client.cancel_job(first.id).status  # DELETE is idempotent
            result["waited"] = client.wait(first.id, timeout=10).status
            result["listed"] = first.id in {j.id for j in client.list_jobs(limit=200).items}
            refused: dict[str, Callable[[], object]] = {
                "missing": lambda: client.get_job(uuid.uuid4()),
                "language": lambda: client.create_job(media.clip, ["xxx"]),
                "not_ready": lambda: client.outputs(first.id, "spa"),
                "not_in_job": lambda: client.outputs(first.id, "fra"),
            }
            for name, call in refused.items():
                with pytest.raises(ApiError) as caught:
                    call()
                result[name] = (caught.value.status, caught.value.code)
        with Client(api.url, "pd_000000000000_" + "x" * 43) as stranger:
            with pytest.raises(ApiError) as caught:
                stranger.languages()
            result["stranger"] = (caught.value.status, caught.value.code)
        return result

    result = await asyncio.to_thread(run)
    assert result == {
        "same": True,
        "cancelled": "cancelled",
        "again": "cancelled",
        "waited": "cancelled",
        "listed": True,
        "missing": (404, "job_not_found"),
        "language": (422, "unsupported_language"),
        "not_ready": (409, "outputs_not_ready"),
        "not_in_job": (404, "language_not_in_job"),
        "stranger": (401, "invalid_api_key"),
    }


class _NoStreams(httpx.AsyncBaseTransport):
    """A proxy that cannot stream: every event stream answers 502."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            self.refused += 1
            return httpx.Response(502, text="bad gateway")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_wait_falls_back_to_polling_and_keeps_its_deadline(
    api: Served, clients: Clients, media: Media, worker: FakeWorker, store: ObjectStore
) -> None:
    transport = _NoStreams()
    events: list[JobEvent] = []
    async with AsyncClient(api.url, clients.key_a.key, transport=transport) as client:
        job = await client.create_job(media.clip, ["spa"], source_language="eng")
        waiting = asyncio.create_task(
            client.wait(job.id, on_event=events.append, poll_interval=0.1, timeout=30)
        )
        await worker.claim(job.id)
        await worker.progress(job.id, "diarize", 0.2, None)
        await wait_for(lambda: _stage_seen(events, "diarize"))
        await worker.finish_target(job.id, "spa", "succeeded", store, {})
        await worker.finish_job(job.id, "succeeded")
        done = await waiting
        assert done.status == "succeeded"
        assert transport.refused >= 1
        assert events[-1].type == "state" and events[-1].status == "succeeded"
        assert ("spa", "succeeded") in {
            (e.language, e.status) for e in events if e.type == "target"
        }

    # Following a job that never moves: keep-alives (every 0.5 s here) let the deadline bite.
    async with AsyncClient(api.url, clients.key_a.key) as client:
        idle = await client.create_job(media.clip, ["fra"], source_language="eng")
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await client.wait(idle.id, timeout=1.0)
        assert asyncio.get_running_loop().time() - started < 5.0
        await client.cancel_job(idle.id)


async def _has(events: list[JobEvent], kind: str) -> bool:
    return any(e.type == kind for e in events)


async def _stage_seen(events: list[JobEvent], stage: str) -> bool:
    return any(e.stage == stage for e in events)
