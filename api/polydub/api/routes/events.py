"""Progress: Server-Sent Events (resumable with Last-Event-ID) and a WebSocket, both fed from
``job_events`` (the record) and woken by NATS ``progress.<job>`` (the signal).

The rows are the truth: a follower reads the job's events after the last id it sent, sends
them, and waits for a NATS message or the poll interval before reading again. NATS only makes
the wait short; if it is down, polling still delivers every event, in order, exactly once.
The stream ends once the job is in a terminal state and its events are all sent, or once its
key is revoked (re-checked every ``api_stream_key_check_seconds``): SSE sends a last ``error``
event, the WebSocket closes with 4401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketState

from polydub.api.auth import key_from_headers
from polydub.api.db.jobs import assert_owned, events_after, job_status
from polydub.api.db.keys import key_active
from polydub.api.deps import AppState, Caller, State
from polydub.api.errors import TooManyRequests, Unauthenticated, envelope
from polydub.errors import InvalidInput, PolydubError
from polydub.infra.queue import progress_subject
from polydub.jobs import SETTLED
from polydub.schemas import ErrorEnvelope

router = APIRouter(tags=["progress"])
BATCH = 500


async def follow(
    state: AppState, job_id: uuid.UUID, after: int, key_id: uuid.UUID
) -> AsyncIterator[dict[str, Any] | None]:
    """Yield the job's events after ``after`` as messages, then new ones as they come;
    ``None`` whenever a wait passed with nothing new (callers send keep-alives on it).
    Raises ``Unauthenticated`` (``api_key_revoked``) once the key ``key_id`` is revoked."""
    checked = time.monotonic()
    wake = asyncio.Event()
    sub = None
    nc = await state.nats.get()
    if nc is not None and nc.is_connected:

        async def on_message(_: Any) -> None:
            wake.set()

        with contextlib.suppress(Exception):
            sub = await nc.subscribe(progress_subject(state.settings, str(job_id)), cb=on_message)
    try:
        while True:
            if time.monotonic() - checked >= state.settings.api_stream_key_check_seconds:
                if not await key_active(state.pool, key_id):
                    raise Unauthenticated("the API key has been revoked", code="api_key_revoked")
                checked = time.monotonic()
            # Status first: a terminal state commits with its event, so the events read next
            # include it, and nothing is left behind when the stream ends.
            status = await job_status(state.pool, job_id)
            if status is None:
                return  # purged meanwhile
            events = await events_after(state.pool, job_id, after, BATCH)
            for event in events:
                after = event["id"]
                yield event
            if len(events) == BATCH:
                continue
            if status in SETTLED:
                return
            wake.clear()
            # Subscribed, NATS wakes us on each event and the poll is only a safety net for a
            # message lost in a NATS restart: poll less, so idle followers cost the database less.
            interval = state.settings.api_events_poll_seconds * (5 if sub is not None else 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            if not wake.is_set():
                yield None
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _sse(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, default=str, separators=(",", ":"))
    return f"id: {message['id']}\nevent: {message['type']}\ndata: {data}\n\n".encode()


def _last_id(header: str | None, query: int | None) -> int:
    if header is None:
        return query or 0
    try:
        value = int(header.strip())
    except ValueError:
        raise InvalidInput(
            "Last-Event-ID must be an event id", code="invalid_last_event_id"
        ) from None
    if value < 0:
        raise InvalidInput("Last-Event-ID must be an event id", code="invalid_last_event_id")
    return value


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "job events as SSE"},
        **{c: {"model": ErrorEnvelope} for c in (401, 404, 422, 429)},
    },
    summary="Progress as Server-Sent Events; resumable with Last-Event-ID",
)
async def events(
    job_id: uuid.UUID,
    state: State,
    key: Caller,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
) -> StreamingResponse:
    await assert_owned(state.pool, key.id, job_id)
    start = _last_id(last_event_id, after)
    keepalive = state.settings.api_sse_keepalive_seconds

    async def stream() -> AsyncIterator[bytes]:
        last_sent = time.monotonic()
        try:
            async for message in follow(state, job_id, start, key.id):
                if message is None:
                    if time.monotonic() - last_sent >= keepalive:
                        last_sent = time.monotonic()
                        yield b": keep-alive\n\n"  # keeps proxies from closing an idle stream
                    continue
                last_sent = time.monotonic()
                yield _sse(message)
        except Unauthenticated as exc:  # revoked while the stream was open: the last event
            data = json.dumps(envelope(exc.code, exc.message), separators=(",", ":"))
            yield f"event: error\ndata: {data}\n\n".encode()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# Application close codes: the HTTP status they stand for, plus 4000.
WS_UNAUTHENTICATED = 4401
WS_NOT_FOUND = 4404
WS_RATE_LIMITED = 4429


@router.websocket("/jobs/{job_id}/progress")
async def progress(websocket: WebSocket, job_id: uuid.UUID, after: int = 0) -> None:
    """The same messages as the SSE stream, one JSON text frame each; closes with 1000 after
    the terminal state, 4401/4404/4429 for an unknown key, a job not yours, a rate limit."""
    state: AppState = websocket.app.state.polydub
    await websocket.accept()
    try:
        key = await state.authenticate(
            key_from_headers(
                websocket.headers.get("authorization"), websocket.headers.get("x-api-key")
            ),
            websocket.client.host if websocket.client else "",
        )
        await state.rate_tokens.take(state.pool, key)
        await assert_owned(state.pool, key.id, job_id)
    except TooManyRequests as exc:
        await websocket.close(WS_RATE_LIMITED, exc.code)
        return
    except PolydubError as exc:
        code = WS_NOT_FOUND if exc.code == "job_not_found" else WS_UNAUTHENTICATED
        await websocket.close(code, exc.code)
        return

    async def send_all() -> None:
        try:
            async for message in follow(state, job_id, max(after, 0), key.id):
                if message is not None:
                    await websocket.send_text(json.dumps(message, default=str))
        except Unauthenticated as exc:  # revoked while the socket was open
            await websocket.close(WS_UNAUTHENTICATED, exc.code)

    sender = asyncio.create_task(send_all())
    receiver = asyncio.create_task(websocket.receive())  # only to notice a client leaving
    done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    for task in (sender, receiver):
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                await task
    if (
        sender in done
        and websocket.client_state == WebSocketState.CONNECTED
        and websocket.application_state == WebSocketState.CONNECTED
    ):
        with contextlib.suppress(Exception):
            sender.result()
            await websocket.close(1000)
