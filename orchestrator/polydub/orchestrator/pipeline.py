"""Run a job's stages in order, resuming after the last finished one.

A stage is a small async function ``(StageContext) -> StageResult`` with a scope: ``job`` stages
run once per job (validate, extract, diarize, transcribe, ...), ``target`` stages once per target
language (translate, synthesize, mix, mux, subtitles, ...). Target languages run concurrently so
their model calls share Triton batches, and each ends with its own status: a permanent error
fails that language alone. A retryable error propagates, so the job is redelivered and resumes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from polydub.errors import PermanentError, PolydubError, classify
from polydub.jobs import JobKeys
from polydub.orchestrator.services import Services
from polydub.orchestrator.state import Cancelled, Fenced, FinishedStages, JobRecord
from polydub.telemetry.metrics import time_stage
from polydub.telemetry.tracing import span

log = logging.getLogger(__name__)

Scope = Literal["job", "target"]
Publish = Callable[[JobRecord, dict[str, Any]], Awaitable[None]]


class StageStore(Protocol):
    """Where the runner records stages, targets and progress (``state.JobStore`` in a worker)."""

    async def finished_stages(self, job_id: uuid.UUID) -> FinishedStages: ...

    async def cancel_requested(self, job_id: uuid.UUID) -> bool: ...

    async def target_statuses(self, job_id: uuid.UUID) -> dict[str, str]: ...

    async def start_stage(self, job: JobRecord, stage: str, language: str = "") -> None: ...

    async def finish_stage(
        self,
        job: JobRecord,
        stage: str,
        language: str,
        outputs: dict[str, Any],
        metrics: dict[str, Any],
        warnings: list[dict[str, str]] | None = None,
    ) -> None: ...

    async def progress(
        self,
        job: JobRecord,
        stage: str,
        fraction: float,
        eta_seconds: float | None,
        language: str = "",
        target_fraction: float | None = None,
        stage_fraction: float | None = None,
    ) -> dict[str, Any]: ...

    async def finish_target(
        self, job: JobRecord, language: str, status: str, error: PolydubError | None = None
    ) -> dict[str, Any]: ...

    async def finish_job(
        self,
        job: JobRecord | uuid.UUID,
        status: str,
        error: PolydubError | None = None,
        *,
        fenced: bool = True,
    ) -> dict[str, Any] | None: ...

    async def await_review(self, job: JobRecord, languages: list[str]) -> dict[str, Any] | None: ...


@dataclass
class StageResult:
    outputs: dict[str, Any] = field(default_factory=dict)  # JSON: object keys and small values
    metrics: dict[str, Any] = field(default_factory=dict)  # for the quality report
    # Quality-gate warnings raised by this stage's figures (gates.QualityIssue.to_dict()).
    warnings: list[dict[str, str]] = field(default_factory=list)


@dataclass
class StageContext:
    job: JobRecord
    stage: str
    language: str  # "" for job-scope stages
    finished: FinishedStages
    services: Services  # the worker's store, inference clients and settings
    workdir: Path  # this stage's scratch folder
    cache_dir: Path  # objects fetched from S3 during this attempt, shared by its stages
    report: Callable[[int, int], Awaitable[None]]  # the progress hook: (completed, total)

    def key(self, filename: str) -> str:
        """The object key of one of this stage's outputs, this attempt's own. Objects are not
        fenced (S3 has no compare-and-set on our attempt), rows are: a stale attempt's late
        write lands on a key no row names, since only a fenced commit (finish_stage,
        add_artifact) records a key for later stages and downloads to read."""
        return JobKeys(self.job.id).stage(self.stage, self.language, filename, self.job.attempt)

    def outputs_of(self, stage: str, language: str | None = None) -> dict[str, Any]:
        """Outputs of an earlier stage: job-scope ones, or this context's language by default."""
        lang = self.language if language is None else language
        if self.finished.done(stage, lang):
            return self.finished.get(stage, lang)
        return self.finished.get(stage, "")


StageFn = Callable[[StageContext], Awaitable[StageResult]]


@dataclass(frozen=True)
class Stage:
    name: str
    scope: Scope
    run: StageFn
    weight: float = 1.0  # relative cost, for percent and ETA


class PipelineRunner:
    def __init__(
        self,
        stages: Sequence[Stage],
        store: StageStore,
        services: Services,
        publish: Publish,
        workdir: Path,
    ) -> None:
        self.job_stages = [s for s in stages if s.scope == "job"]
        self.target_stages = [s for s in stages if s.scope == "target"]
        self.store = store
        self.services = services
        self.publish = publish
        self.workdir = workdir

    async def run(self, job: JobRecord) -> dict[str, Any] | None:
        """Run what is left of the job; returns the terminal state event (None if already set)."""
        workdir = self.workdir / str(job.id)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            return await self._run(job, workdir)
        finally:
            # Scratch space holds media: never let it pile up on a worker (resume reads S3).
            shutil.rmtree(workdir, ignore_errors=True)

    async def _run(self, job: JobRecord, workdir: Path) -> dict[str, Any] | None:
        finished = await self.store.finished_stages(job.id)
        tracker = _Progress(self, job, finished)

        for stage in self.job_stages:
            await self._run_stage(job, stage, "", finished, tracker, workdir)

        statuses = await self.store.target_statuses(job.id)
        done = ("succeeded", "failed", "review")  # review: waits for a person, then a render
        pending = [t for t in job.targets if statuses.get(t) not in done]
        try:
            async with asyncio.TaskGroup() as group:
                for language in pending:
                    group.create_task(self._run_target(job, language, finished, tracker, workdir))
        except BaseExceptionGroup as group_error:
            # One target's retryable error cancelled the others; surface the most decisive one.
            raise _decisive(group_error) from None

        statuses = await self.store.target_statuses(job.id)
        failed = [lang for lang, s in statuses.items() if s == "failed"]
        waiting = [lang for lang, s in statuses.items() if s == "review"]
        if waiting:
            # Not finished: job.succeeded (or partially_succeeded) only once renders approved
            # every language waiting for review.
            event = await self.store.await_review(job, waiting)
        elif failed and len(failed) == len(statuses):
            error = PermanentError(
                f"every target language failed: {', '.join(sorted(failed))}",
                code="all_targets_failed",
            )
            event = await self.store.finish_job(job, "failed", error)
        else:
            event = await self.store.finish_job(job, "succeeded")
        if event:
            await self.publish(job, event)
        return event

    async def _run_target(
        self,
        job: JobRecord,
        language: str,
        finished: FinishedStages,
        tracker: _Progress,
        workdir: Path,
    ) -> None:
        try:
            for stage in self.target_stages:
                await self._run_stage(job, stage, language, finished, tracker, workdir)
                if stage.name == REVIEW_AFTER and _waits_for_review(job, language, finished):
                    event = await self.store.finish_target(job, language, "review")
                    await self.publish(job, event)
                    return
        except (Fenced, Cancelled):
            raise
        except Exception as exc:
            error = classify(exc)
            if error.retryable:
                raise error from exc
            log.error(
                "target failed",
                extra={"language": language, "code": error.code, "error": error.message},
            )
            event = await self.store.finish_target(job, language, "failed", error)
            await self.publish(job, event)
            return
        event = await self.store.finish_target(job, language, "succeeded")
        await self.publish(job, event)

    async def _run_stage(
        self,
        job: JobRecord,
        stage: Stage,
        language: str,
        finished: FinishedStages,
        tracker: _Progress,
        workdir: Path,
    ) -> None:
        if finished.done(stage.name, language):
            return
        if await self.store.cancel_requested(job.id):
            raise Cancelled(f"job {job.id} cancelled before {stage.name}")
        attributes = {
            "polydub.job_id": str(job.id),
            "polydub.attempt": job.attempt,
            "polydub.stage": stage.name,
            "polydub.language": language or None,
        }
        # A child of the job's span (target-language tasks inherit it); model calls nest below.
        with span(f"stage.{stage.name}", attributes=attributes), time_stage(stage.name):
            await self._execute_stage(job, stage, language, finished, tracker, workdir)

    async def _execute_stage(
        self,
        job: JobRecord,
        stage: Stage,
        language: str,
        finished: FinishedStages,
        tracker: _Progress,
        workdir: Path,
    ) -> None:
        await self.store.start_stage(job, stage.name, language)
        await tracker.update(stage, language, 0.0)

        async def report(completed: int, total: int) -> None:
            await tracker.update(stage, language, completed / total if total else 0.0)

        stage_dir = workdir / stage.name / (language or "_")
        stage_dir.mkdir(parents=True, exist_ok=True)
        context = StageContext(
            job, stage.name, language, finished, self.services, stage_dir, workdir / "cache", report
        )
        started = time.monotonic()
        result = await stage.run(context)
        result.metrics.setdefault("seconds", round(time.monotonic() - started, 3))
        await self.store.finish_stage(
            job, stage.name, language, result.outputs, result.metrics, result.warnings
        )
        finished.outputs[(stage.name, language)] = result.outputs
        await tracker.update(stage, language, 1.0, done=True)


# A ``review`` job's languages stop here (translated, voices cast, nothing spoken yet) until a
# render of their segments (polydub.review) leaves its record.
REVIEW_AFTER = "assign_voices"


def _waits_for_review(job: JobRecord, language: str, finished: FinishedStages) -> bool:
    return bool(job.options.get("review")) and not finished.done("review", language)


class _Progress:
    """Percent and ETA from stage weights; ETA from this attempt's pace."""

    def __init__(self, runner: PipelineRunner, job: JobRecord, finished: FinishedStages) -> None:
        self.runner = runner
        self.job = job
        per_target = sum(s.weight for s in runner.target_stages)
        self.total = sum(s.weight for s in runner.job_stages) + per_target * max(
            len(job.targets), 1
        )
        self.per_target_total = per_target or 1.0
        self.done = sum(s.weight for s in runner.job_stages if finished.done(s.name))
        self.target_done = {
            t: sum(s.weight for s in runner.target_stages if finished.done(s.name, t))
            for t in job.targets
        }
        self.done += sum(self.target_done.values())
        self.start_done = self.done
        self.started = time.monotonic()
        self.last_publish = 0.0
        self.partial: dict[str, float] = {}  # language ("" for job stages) -> in-stage weight
        self.lock = asyncio.Lock()

    async def update(
        self, stage: Stage, language: str, fraction: float, *, done: bool = False
    ) -> None:
        # Target languages run concurrently: each keeps its own in-stage share, and the lock
        # keeps computing and recording in one order, so the job's percent never goes back.
        async with self.lock:
            if done:
                self.done += stage.weight
                if language:
                    self.target_done[language] += stage.weight
                self.partial.pop(language, None)
            else:
                self.partial[language] = stage.weight * fraction
            now = time.monotonic()
            # Throttle intermediate updates; stage boundaries always go out.
            if not done and fraction not in (0.0, 1.0) and now - self.last_publish < 0.5:
                return
            self.last_publish = now
            progressed = self.done + sum(self.partial.values())
            overall = min(progressed / self.total, 1.0) if self.total else 1.0
            gained = progressed - self.start_done
            eta = (
                round((now - self.started) * (self.total - progressed) / gained, 1)
                if gained > 0
                else None
            )
            target_fraction = None
            if language:
                own = self.target_done[language] + self.partial.get(language, 0.0)
                target_fraction = own / self.per_target_total
            event = await self.runner.store.progress(
                self.job,
                stage.name,
                overall,
                eta,
                language,
                target_fraction,
                stage_fraction=1.0 if done else fraction,
            )
        await self.runner.publish(self.job, event)


def _decisive(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Fenced beats Cancelled beats any other error: each changes what the worker must do."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for kind in (Fenced, Cancelled):
        for error in leaves:
            if isinstance(error, kind):
                return error
    real = [e for e in leaves if not isinstance(e, asyncio.CancelledError)]
    return (real or leaves)[0]
