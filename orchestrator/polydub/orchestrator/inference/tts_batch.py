"""Rows of concurrent syntheses sent to Triton together: one request, several sentences.

Why here and not only in Triton's dynamic batcher: Triton batches requests whose tensors have
equal shapes, and a VITS run costs about (rows) x (the longest row's frames), so a batch pays
off only for sentences of similar length. The dub stage asks for every segment of a job at once
(and a worker serves several jobs), so the client sees many rows together: it sorts them by their
expected length (tokens x length scale) and sends groups of similar ones as one request of up to
``max_rows`` rows, padded to the group's longest (``TOKEN_BUCKET`` multiple, so Triton can still
batch equal shapes across processes). Rows are independent in the graph (masked padding,
per-row seed, rate and noise): a row's speech is the same alone or in a group.

On CPU it does not pay, measured at MMS-TTS real shape (onnxruntime, 2-D convolutions): on one
thread 4 equal rows in one run took 3-11 % more CPU than the 4 rows one by one (1.87 vs 1.82 s
for 35 tokens, 6.5 vs 5.8 s for 115); only on two intra-op threads was the batch faster, because
a single row keeps two threads waiting on each other, which two single-threaded instances avoid
better (model config). ``bench/tts.py`` at 8 concurrent: grouped rows 2.89 audio s per CPU s,
one row per request 3.01. So ``TtsClient`` sends rows alone by default (``max_rows`` 1 skips
the window); grouping is for accelerators, where a batch is nearly free.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

Send = Callable[[str, dict[str, NDArray[Any]], float], Awaitable[dict[str, NDArray[Any]]]]


@dataclass(frozen=True)
class Row:
    ids: Sequence[int]
    length_scale: float
    noise_scale: float
    noise_scale_duration: float
    seed: int

    @property
    def units(self) -> float:
        """The expected length of its speech (and work), in tokens at rate 1."""
        return len(self.ids) * self.length_scale


@dataclass(frozen=True)
class RowResult:
    samples: NDArray[np.float32]
    durations: NDArray[np.float32]  # frames per token at length scale 1, before rounding up


@dataclass
class _Waiting:
    row: Row
    future: asyncio.Future[RowResult]
    group: list[_Waiting] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def group_rows(units: Sequence[float], max_rows: int, min_fill: float) -> list[list[int]]:
    """Indices grouped longest first: a row joins a group while the group has room and the row
    is at least ``min_fill`` of the group's longest (what the padded rows waste)."""
    order = sorted(range(len(units)), key=lambda i: -units[i])
    groups: list[list[int]] = []
    for i in order:
        last = groups[-1] if groups else None
        if last and len(last) < max_rows and units[i] >= min_fill * units[last[0]]:
            last.append(i)
        else:
            groups.append([i])
    return groups


def batch_inputs(rows: Sequence[Row], bucket: int) -> dict[str, NDArray[Any]]:
    """One request's tensors for ``rows``, ``input_ids`` padded to a multiple of ``bucket``."""
    longest = max(len(r.ids) for r in rows)
    width = max(bucket, -(-longest // bucket) * bucket)
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row.ids)] = row.ids
        attention_mask[i, : len(row.ids)] = 1

    def column(values: list[float] | list[int], dtype: Any) -> NDArray[Any]:
        return np.array(values, dtype=dtype).reshape(-1, 1)

    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "length_scale": column([r.length_scale for r in rows], np.float32),
        "noise_scale": column([r.noise_scale for r in rows], np.float32),
        "noise_scale_duration": column([r.noise_scale_duration for r in rows], np.float32),
        "seed": column([r.seed for r in rows], np.int64),
    }


class RowBatcher:
    """Collects the rows asked for within ``window`` seconds, per model, and sends them in
    groups (``group_rows``); ``max_rows`` 1 sends every row alone."""

    def __init__(
        self,
        send: Send,
        *,
        max_rows: int = 8,
        window: float = 0.005,
        min_fill: float = 0.75,
        bucket: int = 16,
    ) -> None:
        self.send = send
        self.max_rows = max_rows
        self.window = window
        self.min_fill = min_fill
        self.bucket = bucket
        self._pending: dict[str, list[_Waiting]] = {}

    async def run(self, model: str, row: Row) -> RowResult:
        if self.max_rows == 1:
            return _split(
                await self.send(model, batch_inputs([row], self.bucket), row.units), 0, row
            )
        loop = asyncio.get_running_loop()
        waiting = _Waiting(row, loop.create_future())
        pending = self._pending.setdefault(model, [])
        pending.append(waiting)
        if len(pending) == 1:
            loop.call_later(self.window, self._flush, model)
        try:
            return await waiting.future
        except asyncio.CancelledError:
            # Nobody left waiting for the group: stop its request (the deadline's cancellation).
            if waiting.task and all(w.future.cancelled() for w in waiting.group):
                waiting.task.cancel()
            raise

    def _flush(self, model: str) -> None:
        waiting = [w for w in self._pending.pop(model, []) if not w.future.done()]
        units = [w.row.units for w in waiting]
        for indices in group_rows(units, self.max_rows, self.min_fill):
            group = [waiting[i] for i in indices]
            task = asyncio.get_running_loop().create_task(self._send(model, group))
            for member in group:
                member.group, member.task = group, task

    async def _send(self, model: str, group: list[_Waiting]) -> None:
        rows = [w.row for w in group]
        try:
            result = await self.send(
                model, batch_inputs(rows, self.bucket), sum(r.units for r in rows)
            )
        except asyncio.CancelledError:
            for member in group:
                member.future.cancel()
            raise
        except Exception as exc:
            for member in group:
                if not member.future.done():
                    member.future.set_exception(exc)
            return
        for i, member in enumerate(group):
            with contextlib.suppress(asyncio.InvalidStateError):  # its caller gave up
                member.future.set_result(_split(result, i, member.row))


def _split(result: dict[str, NDArray[Any]], index: int, row: Row) -> RowResult:
    """Row ``index`` of a multi-row answer, cut to its own samples and tokens."""
    valid = int(result["waveform_lengths"].reshape(-1)[index])
    return RowResult(
        np.ascontiguousarray(result["waveform"][index, :valid], dtype=np.float32),
        np.asarray(result["durations"][index, : len(row.ids)], dtype=np.float32),
    )
