"""The worker's operations server (metrics and health) and the pollers that feed its gauges.

Queue depth comes from the JetStream consumer the workers share (every worker reports the same
number: take max, not sum), Triton's batching from its statistics extension.

The operations server answers from a thread, so a scrape never waits on the event loop:
``/metrics``; ``/health/live`` (the process answers); ``/health/ready`` (the checks the worker
registered once connected, run on its event loop: 503 before that, while a check fails, while
draining, or when the loop does not answer in time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from polydub.health import CheckResult
from polydub.telemetry.metrics import QUEUE_DEPTH, TRITON_STATISTICS

log = logging.getLogger(__name__)


class StatisticsSource(Protocol):
    async def all_statistics(self) -> list[dict[str, Any]]: ...


Readiness = Callable[[], Awaitable[Mapping[str, CheckResult]]]

# How long a probe waits for the event loop to run the checks (each check has its own timeout).
READY_TIMEOUT = 5.0


class OperationsServer:
    """``/metrics`` and the health endpoints on ``port`` (0: none), from a thread."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self._readiness: tuple[Readiness, asyncio.AbstractEventLoop] | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.port == 0:
            return
        operations = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = operations.answer(
                    self.path, self.headers.get("Accept", "")
                )
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds: not worth a log line each

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="operations-server", daemon=True
        )
        self._thread.start()

    def ready_with(self, check: Readiness, loop: asyncio.AbstractEventLoop) -> None:
        """From now on /health/ready runs ``check`` on ``loop``."""
        self._readiness = (check, loop)

    def not_ready(self) -> None:
        self._readiness = None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def answer(self, path: str, accept: str = "") -> tuple[int, str, bytes]:
        route = path.split("?", 1)[0]
        if route == "/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(REGISTRY)
        if route == "/health/live":
            return _json(200, {"status": "ok"})
        if route == "/health/ready":
            return self._ready()
        return _json(404, {"error": {"code": "not_found", "message": route}})

    def _ready(self) -> tuple[int, str, bytes]:
        registered = self._readiness
        if registered is None:
            return _json(
                503, {"status": "not_ready", "error": "not connected (starting or stopping)"}
            )
        check, loop = registered
        try:
            future = asyncio.run_coroutine_threadsafe(_collect(check), loop)
            checks = future.result(timeout=READY_TIMEOUT)
        except Exception as exc:  # a stopped or stuck loop: nothing on it would work either
            error = f"the worker's event loop did not answer: {type(exc).__name__}: {exc}"[:200]
            return _json(503, {"status": "not_ready", "error": error})
        ok = all(c.ok for c in checks.values())
        body = {
            "status": "ready" if ok else "not_ready",
            "checks": {name: dataclasses.asdict(c) for name, c in checks.items()},
        }
        return _json(200 if ok else 503, body)


async def _collect(check: Readiness) -> Mapping[str, CheckResult]:
    return await check()


def _json(status: int, body: Mapping[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()


async def poll_queue_depth(js: JetStreamContext, stream: str, consumer: str) -> int:
    info = await js.consumer_info(stream, consumer)
    depth = (info.num_pending or 0) + (info.num_ack_pending or 0)
    QUEUE_DEPTH.labels(stream, consumer).set(depth)
    return depth


async def poll_triton(source: StatisticsSource) -> None:
    TRITON_STATISTICS.update(await source.all_statistics())


async def run_pollers(
    js: JetStreamContext,
    stream: str,
    consumer: str,
    triton: StatisticsSource,
    interval: float,
) -> None:
    """Until cancelled: refresh the gauges every ``interval`` seconds; a failed poll keeps the
    last values (NATS reconnecting, Triton restarting) and is logged at debug level."""
    while True:
        polls: tuple[tuple[str, Callable[[], Awaitable[object]]], ...] = (
            ("queue depth", lambda: poll_queue_depth(js, stream, consumer)),
            ("triton statistics", lambda: poll_triton(triton)),
        )
        for name, poll in polls:
            try:
                await poll()
            except Exception as exc:
                if _cancelling():  # a client that turned our cancellation into its own error
                    raise asyncio.CancelledError from exc
                log.debug("metrics poll failed", extra={"poll": name, "error": str(exc)})
        await asyncio.sleep(interval)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
