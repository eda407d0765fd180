"""A served model's Triton statistics, read the way tests can rely on: Triton updates them just
after the responses go out, so a read right after the last answer may not count it yet."""

from __future__ import annotations

import asyncio

from polydub.infra.triton import InferenceClient


async def counts(triton: InferenceClient, model: str, at_least: int = 0) -> tuple[int, int]:
    """(inference_count, execution_count), once at least ``at_least`` inferences are counted
    (waits up to 5 s; the counts as they are then)."""
    for _ in range(50):
        stats = await triton.statistics(model)
        found = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
        if found[0] >= at_least:
            break
        await asyncio.sleep(0.1)
    return found


async def settled(triton: InferenceClient, model: str) -> tuple[int, int]:
    """The counts once two reads 0.2 s apart agree (no update still on its way)."""
    last = await counts(triton, model)
    for _ in range(25):
        await asyncio.sleep(0.2)
        now = await counts(triton, model)
        if now == last:
            break
        last = now
    return last
