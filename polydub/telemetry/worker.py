"""The worker's metrics server and the pollers that feed its gauges.

Queue depth comes from the JetStream consumer the workers share (every worker reports the same
number: take max, not sum), Triton's batching from its statistics extension.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nats.js import JetStreamContext
from prometheus_client import start_http_server

from polydub.telemetry.metrics import QUEUE_DEPTH, TRITON_STATISTICS

log = logging.getLogger(__name__)


class StatisticsSource(Protocol):
    async def all_statistics(self) -> list[dict[str, Any]]: ...


def start_metrics_server(port: int, host: str = "0.0.0.0") -> Callable[[], None]:
    """Serve ``/metrics`` from a thread; returns the function that stops it. Port 0: none."""
    if port == 0:
        return lambda: None
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


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
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("metrics poll failed", extra={"poll": name, "error": str(exc)})
        await asyncio.sleep(interval)
