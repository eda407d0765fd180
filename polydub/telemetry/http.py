"""The API's request telemetry: a server span and the request metrics, and ``/metrics``.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which buffers a streamed
response (the SSE progress stream). The route label is the matched template
(``/api/v1/jobs/{job_id}``), never the raw path, so its values stay a small set.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polydub.telemetry.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS
from polydub.telemetry.propagation import extract_context
from polydub.telemetry.tracing import span

# Scrapes and probes: counted, but no span (they would drown the traces).
UNTRACED = frozenset({"/metrics", "/health/live", "/health/ready"})
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The matched route's full template, or ``unmatched``.

    Recent FastAPI versions match an included router's routes under its prefix without copying
    them, so ``scope["route"].path`` lacks the prefix: it is taken back from the request path,
    whose last segments the route's template matched one for one.
    """
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    if ":path}" in template:  # spans several segments: the prefix cannot be told apart
        return template
    segments = str(scope.get("path", "")).rstrip("/").split("/")
    matched = template.rstrip("/").count("/")
    prefix = "/".join(segments[: max(len(segments) - matched, 1)])
    return prefix + template


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        status = [500]  # what an exception escaping the app becomes

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            if path in UNTRACED:
                await self.app(scope, receive, send_wrapper)
            else:
                await self._traced(scope, receive, send_wrapper, method, path, status)
        finally:
            route = route_of(scope)
            HTTP_REQUESTS.labels(route, method, str(status[0])).inc()
            HTTP_REQUEST_DURATION.labels(route, method).observe(time.monotonic() - started)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, method: str, path: str, status: list[int]
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": scope.get("scheme", "http"),
            "user_agent.original": headers.get("user-agent"),
        }
        with span(
            method, kind=SpanKind.SERVER, attributes=attributes, context=extract_context(headers)
        ) as current:
            try:
                await self.app(scope, receive, send)
            finally:
                route = route_of(scope)
                if route != UNMATCHED:
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)
                current.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    current.set_status(Status(StatusCode.ERROR))


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this process's registry."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
