"""What a worker's readiness means: it can take a job and run it.

- ``nats``: the connection is up;
- ``consumer``: JetStream answers for the workers' consumer on the jobs stream (a worker whose
  stream or consumer is gone, or whose JetStream has no leader, fetches nothing);
- ``triton``: Triton answers ready (every stage after validate calls it);
- ``worker``: the consume loop is running, not draining after SIGTERM.

Served as ``/health/ready`` by the operations server (polydub.telemetry.worker); the chart's
readinessProbe reads it, so a rollout waits for new workers that can work, and a worker cut off
from Triton shows as unready instead of failing every job it takes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from polydub.health import CHECK_TIMEOUT, CheckResult, timed_check
from polydub.infra.triton import InferenceClient


@dataclass(frozen=True)
class WorkerHealth:
    nc: NATS
    js: JetStreamContext
    stream: str
    consumer: str
    triton: InferenceClient
    stopping: asyncio.Event

    async def readiness(self) -> dict[str, CheckResult]:
        async def nats() -> bool:
            return bool(self.nc.is_connected)

        async def consumer() -> bool:
            await self.js.consumer_info(self.stream, self.consumer, timeout=CHECK_TIMEOUT)
            return True

        async def triton() -> bool:
            return await self.triton.is_ready()

        async def worker() -> bool:
            return not self.stopping.is_set()

        checks = {"nats": nats, "consumer": consumer, "triton": triton, "worker": worker}
        results = await asyncio.gather(*(timed_check(c) for c in checks.values()))
        return dict(zip(checks, results, strict=True))
