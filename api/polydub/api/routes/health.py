"""Liveness (the process answers) and readiness (PostgreSQL, NATS, S3 and Triton all answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from polydub.api.deps import AppState, State
from polydub.api.errors import envelope
from polydub.health import CHECK_TIMEOUT, timed_check
from polydub.schemas import CheckOut, ErrorEnvelope, HealthOut


async def _timed(check: Callable[[], Awaitable[bool]]) -> CheckOut:
    result = await timed_check(check)
    return CheckOut(ok=result.ok, ms=result.ms, error=result.error)


async def readiness(state: AppState) -> dict[str, CheckOut]:
    async def postgres() -> bool:
        return bool(await state.pool.fetchval("SELECT 1", timeout=CHECK_TIMEOUT) == 1)

    async def nats() -> bool:
        nc = await state.nats.get()
        if nc is None or not nc.is_connected:
            return False
        await nc.flush(timeout=int(CHECK_TIMEOUT))
        return True

    async def s3() -> bool:
        await state.store.exists("health/probe")  # a stat: answers False or raises
        return True

    async def triton() -> bool:
        return await state.triton.is_ready()

    names = ("postgres", "nats", "s3", "triton")
    results = await asyncio.gather(*(_timed(c) for c in (postgres, nats, s3, triton)))
    return dict(zip(names, results, strict=True))


def _live() -> HealthOut:
    return HealthOut(status="ok")


def make_router(*, detailed: bool) -> APIRouter:
    """Liveness and readiness. ``detailed`` readiness names each dependency with its timing and
    error: served on the operations port when there is one, never to the public."""
    health = APIRouter(tags=["health"])

    @health.get("/health/live", response_model=HealthOut, summary="The process is up")
    async def live() -> HealthOut:
        return _live()

    @health.get(
        "/health/ready",
        response_model=HealthOut,
        responses={503: {"model": ErrorEnvelope}},
        summary="Every dependency answers: PostgreSQL, NATS, S3, Triton",
    )
    async def ready(state: State) -> HealthOut | JSONResponse:
        checks = await readiness(state)
        if all(c.ok for c in checks.values()):
            return HealthOut(status="ready", checks=checks if detailed else {})
        if not detailed:
            body = envelope("not_ready", "not ready")
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        failing = sorted(name for name, c in checks.items() if not c.ok)
        body = envelope(
            "not_ready",
            f"not ready: {', '.join(failing)}",
            {"checks": {name: c.model_dump() for name, c in checks.items()}},
        )
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    return health
