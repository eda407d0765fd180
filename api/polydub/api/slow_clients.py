"""Slow clients may not hold a connection (and a spool folder) for ever.

Two deadlines, as a reverse proxy would set them (nginx's client_header_timeout and
client_body_timeout):

- Headers: ``HeaderDeadlineProtocol`` (uvicorn's h11 protocol) closes a connection whose request
  headers are not complete ``api_header_timeout_seconds`` after it opened, or after the previous
  response on it, with a bare 408. The ASGI app never sees such a request: only the protocol can
  time it.
- Body: ``BodyDeadline`` (an ASGI middleware) gives each wait for a body chunk at most
  ``api_body_timeout_seconds``, and after that grace the body must average
  ``api_body_min_bytes_per_second`` over the time spent waiting on the client (time the app
  spends writing to disk is not the client's). Past either, the request fails with 408
  ``request_timeout`` and ``Connection: close``; the routes' spool folders are removed as for
  any failed upload.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from polydub.api.errors import ApiError
from polydub.settings import Settings, get_settings


class RequestTimeout(ApiError):
    code = "request_timeout"
    http_status = 408


_TOO_SLOW = b"the request headers took too long to arrive\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_SLOW), _TOO_SLOW)
)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers.

    ``header_timeout`` None reads ``api_header_timeout_seconds`` from the process's settings (the
    served API: ``polydub api serve`` runs on them); ``with_header_timeout`` binds another value.
    """

    header_timeout: ClassVar[float | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: object | None = None
        limit = type(self).header_timeout
        self._header_seconds = (
            limit if limit is not None else get_settings().api_header_timeout_seconds
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket
            self._disarm()
        elif self.cycle is not None and self.cycle is not self._timed_cycle:
            self._disarm()  # a new request's headers are complete: the body has its own limits

    def on_response_complete(self) -> None:
        finished = self.cycle
        super().on_response_complete()  # may start a pipelined request already received
        if not self.transport.is_closing() and self.cycle is finished:
            self._timed_cycle = finished  # the next request's headers have their own deadline
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self._header_seconds, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        # A request whose headers are still arriving has no response cycle to answer in, so
        # the 408 goes out as raw bytes (h11 refuses a response before a complete request).
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with its own header deadline (a server whose settings are not the
    process's, e.g. one a test starts in its own event loop)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})


class _Progress:
    """How much of a body arrived in how much waiting on the client."""

    def __init__(self, grace: float, min_rate: float) -> None:
        self.grace = grace
        self.min_rate = min_rate
        self.received = 0
        self.waited = 0.0
        self.complete = False
        self.timed_out = False

    def allowance(self) -> float:
        """Seconds the next chunk may take: never more than the grace, and never past the point
        where the average over all waiting would fall below the minimum rate."""
        if self.min_rate <= 0:
            return self.grace
        earned = self.grace + self.received / self.min_rate - self.waited
        return max(0.0, min(self.grace, earned))


class BodyDeadline:
    """ASGI middleware: a request body that trickles is answered 408 ``request_timeout``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.grace = settings.api_body_timeout_seconds
        self.min_rate = float(settings.api_body_min_bytes_per_second)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        progress = _Progress(self.grace, self.min_rate)

        async def timed_receive() -> Message:
            if progress.complete:
                return await receive()  # the body is in: later receives only wait for a disconnect
            allowance = progress.allowance()
            started = time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), allowance)
            except TimeoutError:
                progress.timed_out = True
                raise RequestTimeout(
                    f"the request body arrived too slowly ({progress.received} bytes in"
                    f" {progress.waited + allowance:.0f} s)",
                    detail={
                        "received_bytes": progress.received,
                        "min_bytes_per_second": progress.min_rate,
                    },
                ) from None
            progress.waited += time.monotonic() - started
            if message["type"] == "http.request":
                progress.received += len(message.get("body", b""))
                progress.complete = not message.get("more_body", False)
            else:
                progress.complete = True
            return message

        async def closing_send(message: Message) -> None:
            # After a timed-out body the rest of it may still be on its way: the connection
            # cannot carry another request.
            if progress.timed_out and message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, timed_receive, closing_send)
