"""Readiness checks, as the API and the worker run them: each dependency's check under its own
time limit, its answer, how long it took and why it failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# Each check's own limit: a probe (and the kubelet's timeout) must outlast all of them.
CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    ms: float
    error: str | None = None


async def timed_check(check: Callable[[], Awaitable[bool]]) -> CheckResult:
    """Run one check within CHECK_TIMEOUT; a timeout or an exception is a failed check, never
    an error."""
    started = time.perf_counter()
    try:
        ok = await asyncio.wait_for(check(), CHECK_TIMEOUT)
        error = None if ok else "not ready"
    except Exception as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"[:200]
    return CheckResult(ok, round((time.perf_counter() - started) * 1000, 1), error)
