"""Background tasks end at shutdown even when a cancellation gets lost on the way: a fresh-clone
CI run hung after an e2e job because the worker's metrics poller caught its cancellation as a
failed poll and slept on, and the worker waited for it forever."""

from __future__ import annotations

import asyncio
import logging

import pytest

from polydub.tasks import cancel_and_wait
from polydub.telemetry.worker import run_pollers

pytestmark = pytest.mark.unit


class _RpcError(Exception):
    """What a gRPC client raises where its caller was cancelled mid-call."""


async def test_a_task_that_swallows_its_first_cancellation_still_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task]), timeout=10)
    assert task.cancelled() and swallowed == 2


async def test_a_failed_task_is_logged_and_shutdown_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken(), name="broken")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="polydub.tasks"):
        await cancel_and_wait([task])
    assert any("background task failed" in r.message for r in caplog.records)


class _Source:
    """A Triton statistics source whose call turns the caller's cancellation into an error."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.convert = True  # turn cancellation into _RpcError

    async def all_statistics(self) -> list[dict[str, object]]:
        self.calls += 1
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.convert:
                raise _RpcError("StatusCode.CANCELLED") from None
            raise
        return []


class _JetStream:
    async def consumer_info(self, stream: str, consumer: str) -> object:
        raise _RpcError("not connected")  # a failed poll: logged, the loop goes on


async def test_the_pollers_end_when_a_client_turns_cancellation_into_an_error() -> None:
    source = _Source()
    task = asyncio.create_task(
        run_pollers(_JetStream(), "jobs", "worker", source, interval=0.01)  # type: ignore[arg-type]
    )
    await asyncio.wait_for(source.entered.wait(), timeout=10)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    if not done:  # the bug: stop the poller another way so the session loop stays clean
        source.convert = False
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    assert done, "the poller caught its cancellation as a failed poll and went on"
    assert task.cancelled() and source.calls == 1
