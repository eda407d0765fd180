"""A ``review`` job's languages stop after translation and voice casting (status 'review'),
and go on to the end once a render left its record."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from polydub.orchestrator.pipeline import PipelineRunner, Stage
from polydub.orchestrator.state import JobRecord
from tests.unit.orchestrator.test_pipeline import NO_SERVICES, MemoryStore, Toys, job, of

pytestmark = pytest.mark.unit


class Dub(Toys):
    def registry(self) -> list[Stage]:
        names = ("translate", "assign_voices", "synthesize", "mux")
        return [self.stage("extract", "job"), *(self.stage(n, "target") for n in names)]


async def run(toys: Toys, store: MemoryStore, record: JobRecord, workdir: Path) -> None:
    async def publish(_job: JobRecord, event: dict[str, Any]) -> None:
        pass

    await PipelineRunner(toys.registry(), store, NO_SERVICES, publish, workdir).run(record)


async def test_a_review_job_waits_after_translation(tmp_path: Path) -> None:
    record = dataclasses.replace(job(("deu", "fra")), options={"review": True})
    toys = Dub()
    store = MemoryStore(record.targets, finished={("review", "fra"): {"state": {}}})
    await run(toys, store, record, tmp_path)

    assert of("deu", toys.calls) == ["translate", "assign_voices"]  # nothing spoken yet
    assert of("fra", toys.calls) == ["translate", "assign_voices", "synthesize", "mux"]
    assert store.statuses == {"deu": "review", "fra": "succeeded"}
    # Not finished while a language waits for review: no job.succeeded before the approval.
    assert store.job_status == ("review", None)

    # Resumed (a redelivery): a language in review is left as it is.
    again = Dub()
    await run(again, MemoryStore(record.targets, statuses=dict(store.statuses)), record, tmp_path)
    assert again.calls == [("extract", "")]


async def test_the_job_succeeds_once_every_language_left_review(tmp_path: Path) -> None:
    record = dataclasses.replace(job(("deu", "fra")), options={"review": True})
    approved: dict[tuple[str, str], dict[str, Any]] = {
        ("review", lang): {"state": {}} for lang in ("deu", "fra")
    }
    store = MemoryStore(record.targets, finished=approved, statuses={"fra": "succeeded"})
    toys = Dub()
    await run(toys, store, record, tmp_path)

    assert of("deu", toys.calls) == ["translate", "assign_voices", "synthesize", "mux"]
    assert store.statuses == {"deu": "succeeded", "fra": "succeeded"}
    assert store.job_status == ("succeeded", None)
