"""Ending a process's background tasks (pollers, relays, unloaders) at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_SECONDS = 1.0


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again while one runs on.

    One cancellation is not always enough: a library can turn it into its own exception (a
    gRPC call cancelled under its caller raises an RPC error, which a loop that logs failed
    polls catches), and Python 3.11's ``wait_for`` drops one that arrives as its inner await
    completes. A worker whose metrics poller lost its cancellation that way never stopped.
    An exception a task ends with is logged, not raised: shutdown goes on."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        for task in pending:
            task.cancel()
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.warning(
                "background task failed", extra={"task": task.get_name(), "error": repr(error)}
            )
