"""Test helpers for the API: an in-process uvicorn, a webhook receiver, media made with ffmpeg,
hand-built multipart bodies (for names httpx would clean), and a stand-in orchestrator.

The orchestrator is not part of these tests: ``FakeWorker`` writes the rows exactly as the
orchestrator does (jobs / job_targets state, job_events, artifacts, webhook_deliveries) and
publishes the same JSON on ``progress.<job>``, so the API is tested against the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from nats.aio.client import Client as NATS

from polydub.infra.queue import progress_subject
from polydub.infra.storage import ObjectStore
from polydub.jobs import record_webhook_delivery
from polydub.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """An ASGI app served by uvicorn inside the test's event loop, on a free port."""

    def __init__(self, app: Any, port: int | None = None, *, http: Any = "auto") -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
            ws="websockets-sansio",
            http=http,  # e.g. slow_clients.with_header_timeout(...), as `polydub api serve` runs
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises the startup error
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str = ""


@dataclass
class Receiver:
    """A webhook endpoint: answers with ``statuses`` in turn (then 200), records each request."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Received(headers, body, str(scope.get("path", ""))))
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        self.arrived.set()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Media:
    clip: Path  # 2 s video + audio (mp4, moov at the end)
    long_clip: Path  # 6 s, keyframe every second, for previews
    no_audio: Path
    truncated: Path
    wav: Path


def make_media(folder: Path) -> Media:
    folder.mkdir(parents=True, exist_ok=True)
    video = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10"]
    audio = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-c:a", "aac"]
    clip, long_clip = folder / "clip.mp4", folder / "long.mp4"
    ffmpeg(*video, *audio, "-t", "2", *codecs, str(clip))
    ffmpeg(*video, *audio, "-t", "6", *codecs, "-movflags", "+faststart", str(long_clip))
    no_audio = folder / "noaudio.mp4"
    ffmpeg(*video, "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", str(no_audio))
    data = long_clip.read_bytes()
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # faststart: header fine, packets missing
    wav = folder / "speech.wav"
    ffmpeg(*audio, "-t", "1", str(wav))
    return Media(clip, long_clip, no_audio, truncated, wav)


def multipart_body(
    fields: list[tuple[str, str]],
    file: bytes | None,
    filename: bytes = b"clip.mp4",
    *,
    file_field: bytes = b"file",
) -> tuple[bytes, str]:
    """Build a multipart/form-data body by hand: raw bytes in the file name are kept as-is."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    if file is not None:
        out += f"--{boundary}\r\n".encode()
        out += b'Content-Disposition: form-data; name="' + file_field + b'"; filename="'
        out += filename + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        out += file + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


async def wait_for(
    check: Callable[[], Awaitable[Any]], within: float = 30.0, interval: float = 0.05
) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


class FakeWorker:
    """Writes job state the way the orchestrator does, and publishes it on progress.<job>."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS, settings: Settings) -> None:
        self.pool = pool
        self.nc = nc
        self.settings = settings

    async def _event(
        self, conn: asyncpg.Connection, job_id: uuid.UUID, kind: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        event_id = await conn.fetchval(
            "INSERT INTO job_events (job_id, type, data) VALUES ($1, $2, $3) RETURNING id",
            job_id,
            kind,
            data,
        )
        return {"id": event_id, "type": kind, **data}

    async def _publish(self, job_id: uuid.UUID, message: dict[str, Any]) -> dict[str, Any]:
        subject = progress_subject(self.settings, str(job_id))
        await self.nc.publish(subject, json.dumps(message).encode())
        return message

    async def claim(self, job_id: uuid.UUID) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            attempt = await conn.fetchval(
                "UPDATE jobs SET attempt = attempt + 1, status = 'running',"
                " started_at = COALESCE(started_at, now()), updated_at = now()"
                " WHERE id = $1 RETURNING attempt",
                job_id,
            )
            event = await self._event(
                conn, job_id, "state", {"status": "running", "attempt": attempt}
            )
        return await self._publish(job_id, event)

    async def progress(
        self, job_id: uuid.UUID, stage: str, fraction: float, eta: float | None
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE jobs SET current_stage = $2, progress = $3, eta_seconds = $4,"
                " updated_at = now() WHERE id = $1",
                job_id,
                stage,
                fraction,
                eta,
            )
            data = {"stage": stage, "progress": fraction, "eta_seconds": eta}
            event = await self._event(conn, job_id, "progress", data)
        return await self._publish(job_id, event)

    async def finish_target(
        self,
        job_id: uuid.UUID,
        language: str,
        status: str,
        store: ObjectStore,
        outputs: dict[str, tuple[bytes, str]],
    ) -> dict[str, Any]:
        for kind, (data, content_type) in outputs.items():
            key = f"jobs/{job_id}/outputs/{language}/{kind}"
            await store.put_bytes(key, data, content_type)
            await self.pool.execute(
                "INSERT INTO artifacts (job_id, language, kind, object_key, content_type,"
                " size_bytes) VALUES ($1, $2, $3, $4, $5, $6)",
                job_id,
                language if not kind.startswith(("source_", "transcript")) else "",
                kind,
                key,
                content_type,
                len(data),
            )
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE job_targets SET status = $3, progress = 1, updated_at = now()"
                " WHERE job_id = $1 AND language = $2",
                job_id,
                language,
                status,
            )
            event = await self._event(
                conn, job_id, "target", {"language": language, "status": status}
            )
        return await self._publish(job_id, event)

    async def finish_job(
        self, job_id: uuid.UUID, status: str, error: dict[str, str] | None = None
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE jobs SET status = $2, error_code = $3, error_message = $4,"
                " finished_at = now(), current_stage = NULL, eta_seconds = NULL,"
                " progress = CASE WHEN $2 = 'succeeded' THEN 1 ELSE progress END,"
                " updated_at = now() WHERE id = $1 RETURNING callback_url",
                job_id,
                status,
                error["code"] if error else None,
                error["message"] if error else None,
            )
            await conn.execute(
                "UPDATE job_targets SET status = $2, updated_at = now()"
                " WHERE job_id = $1 AND status IN ('queued', 'running')",
                job_id,
                "cancelled" if status == "cancelled" else "failed",
            )
            # The orchestrator's own writer: the callback_url and the key's endpoints.
            await record_webhook_delivery(conn, job_id, status, row["callback_url"])
            data: dict[str, Any] = {"status": status}
            if error:
                data["error"] = error
            event = await self._event(conn, job_id, "state", data)
        return await self._publish(job_id, event)
