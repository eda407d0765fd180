"""Concurrent syntheses sent as multi-row requests (``polydub.orchestrator.inference.tts_batch``):
grouping by expected length, the same speech as one request per sentence (tiny export, answered
in-process by onnxruntime), errors and cancellation reaching every row of a group."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export.spec import ExportReport
from polydub.orchestrator.inference.tts import TtsClient
from polydub.orchestrator.inference.tts_batch import Row, RowBatcher, batch_inputs, group_rows
from tests.unit.orchestrator.test_tts import LocalTriton
from tests.unit.tiny_exports import TTS_LANGUAGE, TTS_MODEL

pytestmark = pytest.mark.unit

TEXTS = [
    "hello there",
    "a much longer sentence about the weather and the trains",
    "good morning",
    "see you tomorrow at the station",
    "yes",
    "the film starts at eight and ends before eleven tonight",
]


class CountingTriton(LocalTriton):
    """LocalTriton that records the rows of each synthesis request."""

    def __init__(self, repository: Path) -> None:
        super().__init__(repository)
        self.rows: list[int] = []

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        if model == TTS_MODEL:
            self.rows.append(int(inputs["input_ids"].shape[0]))
        return await super().infer(model, inputs, outputs, deadline=deadline)


def test_groups_take_rows_of_similar_length_longest_first() -> None:
    units = [10.0, 100.0, 12.0, 90.0, 80.0, 11.0, 95.0]
    assert group_rows(units, max_rows=8, min_fill=0.75) == [[1, 6, 3, 4], [2, 5, 0]]
    assert group_rows(units, max_rows=2, min_fill=0.75) == [[1, 6], [3, 4], [2, 5], [0]]
    assert group_rows(units, max_rows=1, min_fill=0.0) == [[1], [6], [3], [4], [2], [5], [0]]
    assert group_rows([], max_rows=8, min_fill=0.75) == []


def test_batch_inputs_pad_every_row_to_the_bucket() -> None:
    rows = [Row([3, 4, 5], 1.0, 0.6, 0.8, 7), Row(list(range(1, 20)), 0.8, 0.5, 0.7, 9)]
    feeds = batch_inputs(rows, bucket=16)
    assert feeds["input_ids"].shape == (2, 32)
    assert feeds["attention_mask"].sum(axis=1).tolist() == [3, 19]
    assert feeds["input_ids"][0, :4].tolist() == [3, 4, 5, 0]
    assert feeds["seed"].tolist() == [[7], [9]]
    assert feeds["length_scale"].dtype == np.float32 and feeds["seed"].dtype == np.int64
    assert feeds["noise_scale"][:, 0].tolist() == pytest.approx([0.6, 0.5])


async def _speak(client: TtsClient) -> list[tuple[NDArray[np.float32], NDArray[np.float32]]]:
    async def one(i: int, text: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        rate = 1.0 if i % 2 else 1.25
        speech, durations = await client._synthesize(text, TTS_LANGUAGE, 1 / rate, 0.667, 0.8, i)
        assert durations is not None
        return speech.samples, durations

    return await asyncio.gather(*(one(i, t) for i, t in enumerate(TEXTS)))


async def test_concurrent_syntheses_share_requests_and_sound_the_same(
    tts_export: tuple[Path, ExportReport],
) -> None:
    batched_triton, alone_triton = CountingTriton(tts_export[0]), CountingTriton(tts_export[0])
    batched = await _speak(TtsClient(batched_triton, batch_rows=8))
    alone = await _speak(TtsClient(alone_triton, batch_rows=1))
    assert alone_triton.rows == [1] * len(TEXTS)
    assert sum(batched_triton.rows) == len(TEXTS) and len(batched_triton.rows) < len(TEXTS)
    for (samples, durations), (samples_alone, durations_alone) in zip(batched, alone, strict=True):
        assert samples.size == samples_alone.size > 0
        assert float(np.max(np.abs(samples - samples_alone))) <= 1e-4
        assert np.allclose(durations, durations_alone, atol=1e-5)


async def test_a_failed_request_fails_every_row_of_its_group() -> None:
    async def send(model: str, feeds: dict[str, NDArray[Any]], units: float) -> Any:
        raise RuntimeError(f"{feeds['input_ids'].shape[0]} rows refused")

    batcher = RowBatcher(send)
    rows = [Row([1] * n, 1.0, 0.667, 0.8, n) for n in (10, 11, 12)]
    results = await asyncio.gather(*(batcher.run("m", r) for r in rows), return_exceptions=True)
    assert [str(r) for r in results] == ["3 rows refused"] * 3


async def test_a_group_nobody_waits_for_any_more_is_cancelled() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def send(model: str, feeds: dict[str, NDArray[Any]], units: float) -> Any:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    batcher = RowBatcher(send)
    callers = [
        asyncio.create_task(batcher.run("m", Row([1] * 8, 1.0, 0.6, 0.8, s))) for s in (1, 2)
    ]
    await asyncio.wait_for(started.wait(), 5)
    callers[0].cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set()  # the other row still waits for the request
    callers[1].cancel()
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.gather(*callers, return_exceptions=True)
