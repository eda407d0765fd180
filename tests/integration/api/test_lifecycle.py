"""A job's whole life through HTTP, SSE and WebSocket, against the real stack.

The orchestrator is not running here: ``FakeWorker`` writes the state changes into PostgreSQL
and publishes them on ``progress.<job>`` exactly as the orchestrator does, so what is tested is
the API's side of that contract: submit → outbox → JetStream, then progress, outputs, webhooks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse
from nats.aio.client import Client as NATS

from polydub.api.webhooks import SIGNATURE_HEADER, verify
from polydub.infra.storage import ObjectStore
from polydub.settings import Settings
from tests.integration.api.conftest import Clients
from tests.integration.api.helpers import FakeWorker, Media, Receiver, Served, wait_for

pytestmark = pytest.mark.integration


async def submit(
    client: httpx.AsyncClient,
    media_path: Any,
    *,
    targets: str = "spa,fra",
    extra: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    data = {"target_languages": targets, "source_language": "eng", **(extra or {})}
    content = await asyncio.to_thread(Path(media_path).read_bytes)
    return await client.post(
        "/api/v1/jobs",
        data=data,
        files={"file": ("talk.mp4", content, "video/mp4")},
        headers=headers or {},
    )


async def stream_message(nc: NATS, settings: Settings, msg_id: str) -> dict[str, Any]:
    """The JetStream message with this Nats-Msg-Id (read by sequence: no consumer needed)."""
    js = nc.jetstream()
    info = await js.stream_info(settings.jobs_stream)
    for seq in range(info.state.last_seq, info.state.first_seq - 1, -1):
        try:
            msg = await js.get_msg(settings.jobs_stream, seq)
        except Exception:
            continue
        if (msg.headers or {}).get("Nats-Msg-Id") == msg_id:
            return {"seq": seq, "payload": json.loads(msg.data or b"{}"), "subject": msg.subject}
    raise AssertionError(f"no message {msg_id} in {settings.jobs_stream}")


async def test_submit_progress_outputs_and_webhook(
    api: Served,
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    nc: NATS,
    api_settings: Settings,
    store: ObjectStore,
    db_pool: asyncpg.Pool,
) -> None:
    receiver = Receiver()
    hook = Served(receiver)
    await hook.start()
    try:
        await _lifecycle(
            api, clients, media, worker, nc, api_settings, store, db_pool, receiver, hook
        )
    finally:
        await hook.stop()


async def _lifecycle(
    api: Served,
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    nc: NATS,
    settings: Settings,
    store: ObjectStore,
    pool: asyncpg.Pool,
    receiver: Receiver,
    hook: Served,
) -> None:
    response = await submit(
        clients.a, media.clip, extra={"callback_url": f"{hook.url}/hook", "num_speakers": "2"}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    job_id = uuid.UUID(job["id"])
    assert response.headers["location"] == f"/api/v1/jobs/{job_id}"
    assert job["status"] == "queued"
    assert job["target_languages"] == ["spa", "fra"] or job["target_languages"] == ["fra", "spa"]
    assert sorted(t["language"] for t in job["targets"]) == ["fra", "spa"]
    assert job["options"]["num_speakers"] == 2 and job["options"]["keep_background"] is True
    assert job["input"]["filename"] == "talk.mp4"
    assert job["input"]["duration_seconds"] == pytest.approx(2.0, abs=0.1)
    assert job["input"]["has_video"] is True
    assert job["links"]["outputs"]["spa"] == f"/api/v1/jobs/{job_id}/outputs/spa"

    # The input is stored under a server-generated key; the user's name is metadata only.
    stored = await store.stat(f"inputs/{job_id}/source")
    assert stored.size == media.clip.stat().st_size
    assert stored.metadata["filename"] == "talk.mp4"

    # The outbox relay publishes the job message with Nats-Msg-Id = job id.
    await wait_for(
        lambda: pool.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE msg_id = $1", str(job_id)
        )
    )
    message = await stream_message(nc, settings, str(job_id))
    assert message["payload"] == {"job_id": str(job_id), "attempt_hint": 0}
    assert message["subject"] == settings.jobs_subject

    # Followers: SSE and WebSocket from the start.
    sse_events: list[dict[str, Any]] = []
    ws_messages: list[dict[str, Any]] = []

    async def read_sse() -> None:
        async with aconnect_sse(clients.a, "GET", f"/api/v1/jobs/{job_id}/events") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            async for event in source.aiter_sse():
                # httpx-sse turns a keep-alive comment into an empty event once an id was
                # seen; the SSE spec says an event with no data is not dispatched: skip it.
                if event.data:
                    sse_events.append({"id": event.id, "event": event.event, "data": event.json()})

    async def read_ws() -> None:
        url = f"ws://127.0.0.1:{api.port}/api/v1/jobs/{job_id}/progress"
        headers = {"Authorization": f"Bearer {clients.key_a.key}"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            async for raw in ws:
                ws_messages.append(json.loads(raw))
            assert ws.close_code == 1000

    readers = [asyncio.create_task(read_sse()), asyncio.create_task(read_ws())]
    await asyncio.sleep(0.3)

    await worker.claim(job_id)
    await worker.progress(job_id, "transcribe", 0.4, 12.0)
    running = (await clients.a.get(f"/api/v1/jobs/{job_id}")).json()
    assert running["status"] == "running"
    assert running["stage"] == "transcribe" and running["percent"] == 40
    assert running["eta_seconds"] == 12.0

    dubbed = media.long_clip.read_bytes()
    srt = b"1\n00:00:00,000 --> 00:00:01,000\nHola\n"
    await worker.finish_target(
        job_id,
        "spa",
        "succeeded",
        store,
        {
            "dubbed_video": (dubbed, "video/mp4"),
            "subtitles_srt": (srt, "application/x-subrip"),
            "source_subtitles_vtt": (b"WEBVTT\n", "text/vtt"),
            "transcript": (b'{"segments": []}', "application/json"),
        },
    )
    await worker.finish_target(
        job_id, "fra", "succeeded", store, {"subtitles_vtt": (b"WEBVTT\n", "text/vtt")}
    )
    await worker.finish_job(job_id, "succeeded")
    await asyncio.wait_for(asyncio.gather(*readers), 15)

    # SSE and WS carry the same messages, in order, ending with the terminal state.
    expected_types = ["state", "state", "progress", "target", "target", "state"]
    assert [e["event"] for e in sse_events] == expected_types
    assert [e["data"] for e in sse_events] == ws_messages
    assert [int(e["id"]) for e in sse_events] == [m["id"] for m in ws_messages]
    assert ws_messages[0]["status"] == "queued" and ws_messages[1]["status"] == "running"
    assert ws_messages[2] == {
        "id": ws_messages[2]["id"],
        "type": "progress",
        "stage": "transcribe",
        "progress": 0.4,
        "eta_seconds": 12.0,
    }
    assert ws_messages[-1]["status"] == "succeeded"

    # Resuming with Last-Event-ID sends only what came after it.
    resumed = []
    after = sse_events[3]["id"]
    async with aconnect_sse(
        clients.a, "GET", f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": after}
    ) as source:
        async for event in source.aiter_sse():
            if event.data:
                resumed.append(event.id)
    assert resumed == [e["id"] for e in sse_events[4:]]

    done = (await clients.a.get(f"/api/v1/jobs/{job_id}")).json()
    assert done["status"] == "succeeded" and done["percent"] == 100
    assert {t["language"]: t["status"] for t in done["targets"]} == {
        "spa": "succeeded",
        "fra": "succeeded",
    }

    # Outputs: links that really download the files, with no key (through the API by default:
    # relative links); job-wide files included.
    outputs = await clients.a.get(f"/api/v1/jobs/{job_id}/outputs/spa")
    assert outputs.status_code == 200, outputs.text
    files = {f["kind"]: f for f in outputs.json()["files"]}
    assert set(files) == {"dubbed_video", "subtitles_srt", "source_subtitles_vtt", "transcript"}
    assert files["dubbed_video"]["filename"] == "talk.spa.mp4"
    async with httpx.AsyncClient(base_url=str(clients.a.base_url)) as plain:
        got = await plain.get(files["subtitles_srt"]["url"])
        assert got.status_code == 200 and got.content == srt
        video = await plain.get(files["dubbed_video"]["url"])
        assert video.content == dubbed
        assert 'filename="talk.spa.mp4"' in video.headers["content-disposition"]

        # A preview clip of 2 s from the dubbed video: cut, cached, and a second ask reuses it.
        first = await clients.a.get(
            f"/api/v1/jobs/{job_id}/outputs/spa", params={"preview_start": 2, "preview_end": 4}
        )
        assert first.status_code == 200, first.text
        preview = first.json()["preview"]
        clip = await plain.get(preview["url"])
        assert clip.status_code == 200 and clip.content[4:8] == b"ftyp"
        assert len(clip.content) == preview["size_bytes"] < len(dubbed)
    key = f"jobs/{job_id}/previews/spa/0-5000.mp4"  # 2-4 s, snapped to the 5 s grid
    assert await store.exists(key)
    again = await clients.a.get(
        f"/api/v1/jobs/{job_id}/outputs/spa", params={"preview_start": 2, "preview_end": 4}
    )
    assert again.json()["preview"]["size_bytes"] == preview["size_bytes"]

    fra = (await clients.a.get(f"/api/v1/jobs/{job_id}/outputs/fra")).json()
    assert {f["kind"] for f in fra["files"]} == {
        "subtitles_vtt",
        "source_subtitles_vtt",
        "transcript",
    }
    missing = await clients.a.get(f"/api/v1/jobs/{job_id}/outputs/deu")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "language_not_in_job"

    # The webhook: one signed POST for the terminal state.
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    await asyncio.sleep(0.5)  # nothing more comes
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.headers["polydub-event"] == "job.succeeded"
    assert verify(
        clients.key_a.webhook_secret, request.headers[SIGNATURE_HEADER.lower()], request.body
    )
    assert not verify("whsec_wrong", request.headers[SIGNATURE_HEADER.lower()], request.body)
    body = json.loads(request.body)
    assert body["type"] == "job.succeeded" and body["job"]["id"] == str(job_id)
    assert body["job"]["status"] == "succeeded"


async def test_cancel_and_retry(
    clients: Clients,
    media: Media,
    worker: FakeWorker,
    db_pool: asyncpg.Pool,
    nc: NATS,
    api_settings: Settings,
) -> None:
    queued = (await submit(clients.a, media.wav, targets="fra")).json()
    job_id = queued["id"]

    # Cancel while queued: cancelled at once.
    cancelled = await clients.a.delete(f"/api/v1/jobs/{job_id}")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["targets"][0]["status"] == "cancelled"
    again = await clients.a.delete(f"/api/v1/jobs/{job_id}")
    assert again.status_code == 202 and again.json()["status"] == "cancelled"

    # Retry: queued again with a fresh message <id>:retry:1 through the outbox.
    retried = await clients.a.post(f"/api/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued" and retried.json()["retries"] == 1
    assert retried.json()["targets"][0]["status"] == "queued"
    await wait_for(
        lambda: db_pool.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE msg_id = $1", f"{job_id}:retry:1"
        )
    )
    message = await stream_message(nc, api_settings, f"{job_id}:retry:1")
    assert message["payload"] == {"job_id": job_id, "attempt_hint": 1}
    conflict = await clients.a.post(f"/api/v1/jobs/{job_id}/retry")
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "job_not_retryable"

    # Cancel while running: only flagged; the worker stops at the next stage boundary.
    await worker.claim(uuid.UUID(job_id))
    flagged = (await clients.a.delete(f"/api/v1/jobs/{job_id}")).json()
    assert flagged["status"] == "running" and flagged["cancel_requested"] is True

    await worker.finish_job(uuid.UUID(job_id), "failed", {"code": "boom", "message": "it broke"})
    failed = (await clients.a.get(f"/api/v1/jobs/{job_id}")).json()
    assert failed["error"] == {"code": "boom", "message": "it broke", "detail": None}
    assert failed["targets"][0]["status"] == "failed"
    not_cancellable = await clients.a.delete(f"/api/v1/jobs/{job_id}")
    assert not_cancellable.status_code == 409
    assert not_cancellable.json()["error"]["code"] == "job_not_cancellable"

    second = (await clients.a.post(f"/api/v1/jobs/{job_id}/retry")).json()
    assert (
        second["retries"] == 2 and second["error"] is None and second["cancel_requested"] is False
    )


async def test_list_is_paginated_and_filtered(
    clients: Clients, media: Media, fresh_key: Any, api: Served
) -> None:
    client = httpx.AsyncClient(
        base_url=api.url, headers={"Authorization": f"Bearer {fresh_key.key}"}, timeout=20
    )
    try:
        ids = [(await submit(client, media.wav, targets="fra")).json()["id"] for _ in range(5)]
        await client.delete(f"/api/v1/jobs/{ids[1]}")
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/jobs", params=params)).json()
            seen += [j["id"] for j in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids)) and pages == 3
        only = (await client.get("/api/v1/jobs", params={"status": "cancelled"})).json()
        assert [j["id"] for j in only["items"]] == [ids[1]]
        bad = await client.get("/api/v1/jobs", params={"colour": "red"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_field"
        bad_cursor = await client.get("/api/v1/jobs", params={"cursor": "nonsense"})
        assert bad_cursor.status_code == 422
        assert bad_cursor.json()["error"]["code"] == "invalid_cursor"
    finally:
        await client.aclose()


async def test_sse_keeps_idle_streams_alive_and_checks_last_event_id(
    clients: Clients, media: Media
) -> None:
    job_id = (await submit(clients.a, media.wav, targets="fra")).json()["id"]
    lines: list[str] = []
    async with clients.a.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
        assert response.headers["cache-control"] == "no-cache"
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith(": keep-alive"):
                break
    assert lines[0].startswith("id: ") and lines[1] == "event: state"
    assert json.loads(lines[2].removeprefix("data: ")) == {
        "id": int(lines[0][4:]),
        "type": "state",
        "status": "queued",
    }
    bad = await clients.a.get(
        f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_last_event_id"
    await clients.a.delete(f"/api/v1/jobs/{job_id}")
