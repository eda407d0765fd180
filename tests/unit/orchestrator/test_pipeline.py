"""The pipeline runner's own rules, with toy stages and an in-memory stage store.

Order (job stages once, then each language's stages), resuming after the last finished stage,
a permanent error failing its language alone, a retryable one propagating for redelivery, and
cancel at a stage boundary. The same rules against PostgreSQL and NATS: test_worker.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from polydub.errors import InvalidInput, PolydubError, ServiceUnavailable
from polydub.orchestrator.pipeline import (
    PipelineRunner,
    Scope,
    Stage,
    StageContext,
    StageResult,
    StageStore,
)
from polydub.orchestrator.services import Services
from polydub.orchestrator.state import Cancelled, FinishedStages, JobRecord

pytestmark = pytest.mark.unit

NO_SERVICES = cast(Services, object())  # the toy stages call no service
Key = tuple[str, str]  # (stage, language); "" for a job stage


@dataclass
class MemoryStore:
    """What ``state.JobStore`` records, kept in dicts."""

    targets: tuple[str, ...]
    finished: dict[Key, dict[str, Any]] = field(default_factory=dict)
    cancel: bool = False
    statuses: dict[str, str] = field(default_factory=dict)
    started: list[Key] = field(default_factory=list)
    recorded: dict[Key, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # language -> error code
    fractions: list[float] = field(default_factory=list)  # the job's progress, in order
    job_status: tuple[str, str | None] | None = None

    def __post_init__(self) -> None:
        for language in self.targets:
            self.statuses.setdefault(language, "queued")

    async def finished_stages(self, job_id: uuid.UUID) -> FinishedStages:
        return FinishedStages(dict(self.finished))

    async def cancel_requested(self, job_id: uuid.UUID) -> bool:
        return self.cancel

    async def target_statuses(self, job_id: uuid.UUID) -> dict[str, str]:
        return dict(self.statuses)

    async def start_stage(self, job: JobRecord, stage: str, language: str = "") -> None:
        self.started.append((stage, language))

    async def finish_stage(
        self,
        job: JobRecord,
        stage: str,
        language: str,
        outputs: dict[str, Any],
        metrics: dict[str, Any],
        warnings: list[dict[str, str]] | None = None,
    ) -> None:
        self.recorded[(stage, language)] = outputs

    async def progress(
        self,
        job: JobRecord,
        stage: str,
        fraction: float,
        eta_seconds: float | None,
        language: str = "",
        target_fraction: float | None = None,
        stage_fraction: float | None = None,
    ) -> dict[str, Any]:
        self.fractions.append(fraction)
        return {"type": "progress", "stage": stage, "progress": fraction}

    async def finish_target(
        self, job: JobRecord, language: str, status: str, error: PolydubError | None = None
    ) -> dict[str, Any]:
        self.statuses[language] = status
        if error is not None:
            self.errors[language] = error.code
        return {"type": "target", "language": language, "status": status}

    async def finish_job(
        self,
        job: JobRecord | uuid.UUID,
        status: str,
        error: PolydubError | None = None,
        *,
        fenced: bool = True,
    ) -> dict[str, Any] | None:
        if self.job_status is not None:
            return None
        self.job_status = (status, error.code if error else None)
        return {"type": "state", "status": status}

    async def await_review(self, job: JobRecord, languages: list[str]) -> dict[str, Any] | None:
        self.job_status = ("review", None)
        return {"type": "state", "status": "review", "review": sorted(languages)}


@dataclass
class Toys:
    """A tiny stage registry: each stage logs its call, reads what it is told to, fails on cue."""

    fail: dict[Key, Exception] = field(default_factory=dict)
    reads: dict[str, list[str]] = field(default_factory=dict)  # stage -> earlier stages it reads
    calls: list[Key] = field(default_factory=list)
    seen: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)

    def stage(self, name: str, scope: Scope) -> Stage:
        async def run(ctx: StageContext) -> StageResult:
            self.calls.append((name, ctx.language))
            self.seen[(name, ctx.language)] = [ctx.outputs_of(s) for s in self.reads.get(name, [])]
            error = self.fail.get((name, ctx.language))
            if error is not None:
                raise error
            await ctx.report(1, 2)
            assert ctx.workdir.is_dir()
            return StageResult({"key": ctx.key(f"{name}.json")})

        return Stage(name, scope, run)

    def registry(self) -> list[Stage]:
        return [
            self.stage("extract", "job"),
            self.stage("transcribe", "job"),
            self.stage("translate", "target"),
            self.stage("mux", "target"),
        ]


def job(targets: tuple[str, ...] = ("deu", "fra")) -> JobRecord:
    return JobRecord(uuid.uuid4(), 1, "eng", targets, {}, "inputs/x", None, None)


async def run(
    toys: Toys, store: StageStore, record: JobRecord, workdir: Path
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    published: list[dict[str, Any]] = []

    async def publish(_job: JobRecord, event: dict[str, Any]) -> None:
        published.append(event)

    runner = PipelineRunner(toys.registry(), store, NO_SERVICES, publish, workdir)
    return await runner.run(record), published


def of(language: str, calls: list[Key]) -> list[str]:
    return [stage for stage, lang in calls if lang == language]


async def test_job_stages_run_once_then_each_languages_stages_in_order(tmp_path: Path) -> None:
    toys, record = Toys(), job()
    store = MemoryStore(record.targets)
    final, published = await run(toys, store, record, tmp_path)

    assert toys.calls[:2] == [("extract", ""), ("transcribe", "")]
    assert of("deu", toys.calls) == of("fra", toys.calls) == ["translate", "mux"]
    assert len(toys.calls) == 6 and store.started == toys.calls
    # Keys are the attempt's own (a1): a fenced-out attempt never writes over them.
    assert store.recorded[("mux", "fra")] == {"key": f"jobs/{record.id}/mux/fra/a1/mux.json"}
    assert store.recorded[("extract", "")] == {"key": f"jobs/{record.id}/extract/_/a1/extract.json"}
    assert store.statuses == {"deu": "succeeded", "fra": "succeeded"}
    assert final == {"type": "state", "status": "succeeded"}
    assert store.job_status == ("succeeded", None)
    assert published[-1] == final
    assert sorted(e["language"] for e in published if e["type"] == "target") == ["deu", "fra"]
    # The job's percent never goes back and ends complete.
    assert store.fractions == sorted(store.fractions) and store.fractions[-1] == 1.0
    assert not (tmp_path / str(record.id)).exists()  # scratch space is removed


async def test_a_stage_reads_its_own_languages_outputs_else_the_jobs(tmp_path: Path) -> None:
    toys, record = Toys(reads={"mux": ["extract", "translate"]}), job()
    await run(toys, MemoryStore(record.targets), record, tmp_path)

    for language in record.targets:
        extract, translate = toys.seen[("mux", language)]
        assert extract == {"key": f"jobs/{record.id}/extract/_/a1/extract.json"}
        assert translate == {"key": f"jobs/{record.id}/translate/{language}/a1/translate.json"}


async def test_resume_skips_every_finished_stage_and_finished_language(tmp_path: Path) -> None:
    record = job(("deu", "fra", "spa"))
    before = {"key": "from the first attempt"}
    store = MemoryStore(
        record.targets,
        finished={
            ("extract", ""): before,
            ("transcribe", ""): before,
            ("translate", "deu"): before,
        },
        statuses={"spa": "succeeded"},
    )
    toys = Toys(reads={"mux": ["translate"]})
    final, _ = await run(toys, store, record, tmp_path)

    assert sorted(toys.calls) == [("mux", "deu"), ("mux", "fra"), ("translate", "fra")]
    assert toys.seen[("mux", "deu")] == [before]  # the earlier attempt's outputs are read back
    assert store.statuses == {"deu": "succeeded", "fra": "succeeded", "spa": "succeeded"}
    assert final is not None and final["status"] == "succeeded"


async def test_a_permanent_error_fails_its_language_alone(tmp_path: Path) -> None:
    record = job()
    toys = Toys(fail={("translate", "fra"): InvalidInput("no such language", code="bad_lang")})
    store = MemoryStore(record.targets)
    final, published = await run(toys, store, record, tmp_path)

    assert of("fra", toys.calls) == ["translate"]  # nothing after the failed stage
    assert of("deu", toys.calls) == ["translate", "mux"]
    assert store.statuses == {"deu": "succeeded", "fra": "failed"}
    assert store.errors == {"fra": "bad_lang"}
    assert ("translate", "fra") not in store.recorded
    assert final is not None and store.job_status == ("succeeded", None)
    assert {"type": "target", "language": "fra", "status": "failed"} in published


async def test_every_language_failing_fails_the_job(tmp_path: Path) -> None:
    record = job()
    toys = Toys(fail={("mux", lang): InvalidInput("cannot mux") for lang in record.targets})
    store = MemoryStore(record.targets)
    final, _ = await run(toys, store, record, tmp_path)

    assert store.statuses == {"deu": "failed", "fra": "failed"}
    assert store.job_status == ("failed", "all_targets_failed")
    assert final == {"type": "state", "status": "failed"}


async def test_a_retryable_error_propagates_for_redelivery(tmp_path: Path) -> None:
    record = job(("deu",))
    toys = Toys(fail={("mux", "deu"): ServiceUnavailable("triton restarting")})
    store = MemoryStore(record.targets)
    with pytest.raises(ServiceUnavailable, match="triton restarting"):
        await run(toys, store, record, tmp_path)

    # Nothing is terminal: the redelivered job resumes at mux.
    assert store.statuses == {"deu": "queued"} and store.job_status is None
    assert set(store.recorded) == {("extract", ""), ("transcribe", ""), ("translate", "deu")}
    assert not (tmp_path / str(record.id)).exists()


async def test_a_failing_job_stage_stops_the_job_there(tmp_path: Path) -> None:
    record = job()
    toys = Toys(fail={("transcribe", ""): InvalidInput("not media")})
    store = MemoryStore(record.targets)
    with pytest.raises(InvalidInput):
        await run(toys, store, record, tmp_path)

    assert toys.calls == [("extract", ""), ("transcribe", "")]
    assert store.job_status is None  # the worker fails the job with this error


async def test_cancel_stops_at_the_next_stage_boundary(tmp_path: Path) -> None:
    record = job()
    store = MemoryStore(record.targets, cancel=True)
    toys = Toys()
    with pytest.raises(Cancelled):
        await run(toys, store, record, tmp_path)
    assert toys.calls == [] and store.started == []
