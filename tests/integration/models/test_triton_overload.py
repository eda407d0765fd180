"""Overload without amplification, against a real Triton serving the tiny NLLB (issue 17 item 6).

A burst of 48 segments sent the way the dub stage sends them (n_best 3, default lengths) once
expired a constant 120 s client deadline, was retried 87 times, and Triton translated 135
segments for 48, since abandoned calls were never cancelled. Here the burst's deadline comes from
its work (segments x expected tokens, at the settings' per-token cost over a generous floor: no
test here depends on how fast this machine is) and Triton's own statistics show each segment
translated exactly once. A deadline that does expire cancels the calls (Triton counts the queued
ones failed and never executes them) and retries stay within the budget.

Triton counts a request the nllb model dropped mid-decode (it checks ``is_cancelled()`` between
steps) as executed, not failed: the python backend reports its CANCELLED answer as a success. So
"executed" bounds the work from above, and the checks rely on the requests still queued, which
the dynamic batcher fails. (Measured by hand: a 32-row request that takes 6.0 s in full ran
0.16 s of compute when its 0.15 s deadline expired.)

The Triton is the test's own (statistics count this file's requests only).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from numpy.typing import NDArray

from polydub.errors import RetryableError
from polydub.export.nllb import NllbExporter
from polydub.export.nllb_graphs import BLS
from polydub.export.spec import Preset, Target
from polydub.infra.triton import Deadline, InferenceClient, RetryPolicy
from polydub.orchestrator.inference.translation import TranslationClient, expected_tokens
from polydub.orchestrator.stages.dub import N_BEST
from polydub.retry import RetryBudget
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.conftest import own_triton, scratch_dir

pytestmark = pytest.mark.integration
SEGMENTS = 48
WORDS = [
    "the",
    "film",
    "starts",
    "at",
    "eight",
    "and",
    "we",
    "will",
    "meet",
    "again",
    "at",
    "the",
    "station",
    "tomorrow",
    "morning",
]
# Sentences of 8-16 words, like a transcript's segments, each different; enough for 5 batches.
TEXTS = [
    " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(8 + i % 9)).capitalize() + f" {i}."
    for i in range(160)
]


@pytest.fixture(scope="module")
def nllb_triton(stack_settings: Settings) -> Iterator[tuple[str, list[str]]]:
    """The gRPC address of a Triton of this module's own, and the tiny NLLB's models in it."""
    root = scratch_dir("polydub-overload-")  # Triton must traverse it
    try:
        with own_triton(stack_settings, root) as settings:
            repository = settings.model_repository
            exporter = NllbExporter()
            report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
            place_templates(repository, report.models)
            yield settings.triton_url, report.models
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def loaded(nllb_triton: tuple[str, list[str]]) -> AsyncIterator[str]:
    url, models = nllb_triton
    async with InferenceClient(url) as client:
        for model in models:  # the graphs before the BLS model that calls them
            await client.load_model(model)
    yield url


@dataclass(frozen=True)
class Counts:
    executed: int  # requests Triton ran (inference_count)
    batches: int  # executions
    failed: int  # requests that ended in an error, e.g. cancelled while queued

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.executed - other.executed, self.batches - other.batches, self.failed - other.failed
        )


async def _counts(client: InferenceClient) -> Counts:
    stats = await client.statistics(BLS)
    failed = stats.get("inference_stats", {}).get("fail", {}).get("count", 0)
    return Counts(
        int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0)), int(failed)
    )


async def _settled(client: InferenceClient, *, quiet: float = 0.5, limit: float = 60.0) -> Counts:
    """The counts once nothing runs: unchanged for ``quiet`` seconds, read every 50 ms."""
    last, since = await _counts(client), time.monotonic()
    give_up = since + limit
    while time.monotonic() < give_up:
        await asyncio.sleep(0.05)
        now = await _counts(client)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"Triton's statistics never settled: {last}")


class Recorded:
    """Passes every call to the real client and keeps the deadline each was given."""

    def __init__(self, client: InferenceClient) -> None:
        self.client = client
        self.deadlines: list[float | None] = []
        self.answered = asyncio.Event()  # set by the first answer

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        self.deadlines.append(deadline)
        result = await self.client.infer(model, inputs, outputs, deadline=deadline)
        self.answered.set()
        return result


def _generous() -> Deadline:
    """The settings' default deadline for translation, its floor at least 10 minutes: a burst on
    a slow, shared machine never expires it, so the counts below are the only checks."""
    fields = Settings.model_fields
    return Deadline(
        floor=max(600.0, float(fields["triton_deadline_floor_seconds"].default)),
        per_unit=float(fields["triton_translation_seconds_per_token"].default),
        cap=max(600.0, float(fields["triton_deadline_max_seconds"].default)),
    )


async def test_a_burst_of_48_segments_is_translated_once_each(loaded: str) -> None:
    budget = RetryBudget(ratio=0.1, window=600.0, min_retries=10)
    async with InferenceClient(loaded, budget=budget) as client:
        deadline = _generous()
        recorded = Recorded(client)
        translator = TranslationClient(recorded, deadline=deadline)
        before = await _settled(client)
        results = await translator.translate_many(TEXTS[:SEGMENTS], "eng", "fra", N_BEST)
        done = await _settled(client) - before

    units = sum(expected_tokens(t, None) for t in TEXTS[:SEGMENTS])
    print(
        f"burst of {SEGMENTS}: deadline {deadline.seconds(units):.1f} s ({units} tokens); "
        f"Triton: {done.executed} requests in {done.batches} executions"
    )
    assert len(results) == SEGMENTS and all(len(r.candidates) == N_BEST for r in results)
    # Every segment translated exactly once: no retries, nothing executed twice or dropped.
    assert done == Counts(executed=SEGMENTS, batches=done.batches, failed=0)
    assert 1 < done.batches < SEGMENTS  # batched together
    assert budget.retries() == 0 and budget.refused == 0
    # The deadline is the whole burst's work, given to every segment of it, not one constant.
    assert recorded.deadlines == [deadline.seconds(units)] * SEGMENTS


async def test_an_expired_deadline_cancels_the_calls_and_retries_stay_in_budget(
    loaded: str,
) -> None:
    budget = RetryBudget(ratio=0.1, window=600.0, min_retries=2)
    allowed = budget.min_retries + budget.ratio * SEGMENTS
    policy = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)  # 3 retries a request
    async with InferenceClient(loaded, retry=policy, budget=budget) as client:
        # 50 ms for 200 tokens of 48 segments: no attempt can finish, every one expires.
        translator = TranslationClient(client, deadline=Deadline(floor=0.05, per_unit=0.0))
        before = await _settled(client)
        with pytest.raises(RetryableError) as caught:
            await translator.translate_many(TEXTS[:SEGMENTS], "eng", "fra", N_BEST, max_length=200)
        done = await _settled(client) - before

    sent = done.executed + done.failed
    print(
        f"expired: {caught.value.code}; retries {budget.retries()} (budget {allowed:.1f}), "
        f"refused {budget.refused}; Triton: {done.executed} executed, {done.failed} cancelled"
    )
    # The stage sees a retryable error (the job's message is redelivered later) ...
    assert caught.value.code in {"triton_retry_budget_spent", "triton_deadline_exceeded"}
    # ... after retries within the budget, where 3 per request would have been 144.
    assert budget.retries() <= allowed and budget.refused >= 1
    assert sent <= SEGMENTS + budget.retries()
    # Triton saw the cancellations: the queued requests failed without being executed.
    assert done.failed >= 1 and done.executed < SEGMENTS


async def test_cancelling_the_stage_cancels_its_calls_in_triton(loaded: str) -> None:
    """A stage cancelled mid-burst (job cancelled, worker draining) leaves nothing behind."""
    # 160, five batches of at most 32. Triton starts the second batch as soon as the first
    # answers, before the client has seen that answer; how long the cancellations then take to
    # reach Triton depends on this machine's load (in one CI run they came only after the second
    # batch had finished). So up to three batches may run, and at least two never do.
    texts = TEXTS
    async with InferenceClient(loaded, budget=RetryBudget()) as client:
        recorded = Recorded(client)
        translator = TranslationClient(
            recorded, deadline=Deadline(floor=600.0, per_unit=0.0), max_in_flight=len(texts)
        )
        before = await _settled(client)
        burst = asyncio.create_task(
            translator.translate_many(texts, "eng", "fra", N_BEST, max_length=200)
        )
        # Cancelled once the first batch is answered (one model instance: one batch at a time).
        await asyncio.wait_for(recorded.answered.wait(), 120)
        burst.cancel()
        with pytest.raises(asyncio.CancelledError):
            await burst
        done = await _settled(client) - before
    print(f"cancelled: Triton {done.executed} executed, {done.failed} cancelled of {len(texts)}")
    assert done.executed + done.failed == len(texts)  # each sent once, none retried
    assert done.failed >= len(texts) - 3 * 32  # the queued ones were never run
