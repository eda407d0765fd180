"""The API's request telemetry: server spans (OpenTelemetry's FastAPI instrumentation, with the
HTTP semantic conventions), the request metrics, and ``/metrics``.

The metrics come from a plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, which
buffers a streamed response (the SSE progress stream). The route label is the matched template
(``/api/v1/jobs/{job_id}``), never the raw path, so its values stay a small set.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from polydub.telemetry.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS
from polydub.telemetry.tracing import FOLLOWING_PROVIDER

if TYPE_CHECKING:
    from fastapi import FastAPI

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
    """The request metrics (polydub_http_*). Spans come from OpenTelemetry's instrumentation
    (``instrument_http``), not from here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # what an exception escaping the app becomes

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_of(scope)
            HTTP_REQUESTS.labels(route, scope["method"], str(status[0])).inc()
            HTTP_REQUEST_DURATION.labels(route, scope["method"]).observe(time.monotonic() - started)


def instrument_http(app: FastAPI) -> None:
    """Server spans by OpenTelemetry's FastAPI instrumentation (polydub-api depends on it), with
    the stable HTTP semantic conventions (``http.request.method``, ``http.route``,
    ``http.response.status_code``, ``url.path``...; OTEL_SEMCONV_STABILITY_OPT_IN, when set,
    decides instead), the trace context taken from ``traceparent``, scrapes and probes left out,
    and no span per ASGI message (a progress stream would make thousands)."""
    # Read once per process, when an instrumentation first asks: set before the import.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=FOLLOWING_PROVIDER,
        excluded_urls=",".join(f"{path}$" for path in UNTRACED),
        exclude_spans=["receive", "send"],
    )


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition of this process's registry."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
