"""Review and re-dub as a service: read a language's segments, edit them (If-Match), render,
and list the files of the versions a render replaced (named as ``job_view.download_name``).

The segments are read from what the stages stored (translation.json, voices.json, timing.json
in S3, named by the language's stage records), overlaid with the edits waiting for a render
(a row of segment_edits). The SQL is db/review.py's; routes/segments.py maps HTTP to this.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg

from polydub.api.auth import ApiKey
from polydub.api.db import jobs as jobs_db
from polydub.api.db import review as review_db
from polydub.api.errors import job_not_found
from polydub.api.job_view import download_name
from polydub.api.routes.downloads import download_link
from polydub.errors import Conflict, NotFound, PermanentError
from polydub.review import (
    ReviewState,
    SegmentOut,
    SegmentsOut,
    SegmentsPatch,
    apply,
    from_stage_files,
)
from polydub.schemas import OutputFile, OutputVersion
from polydub.voice_catalog import voice_ids

if TYPE_CHECKING:
    from polydub.api.deps import AppState


class PreconditionFailed(PermanentError):
    http_status = 412
    code = "etag_mismatch"


class PreconditionRequired(PermanentError):
    http_status = 428
    code = "if_match_required"


class ReviewService:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def segments(self, key: ApiKey, job_id: uuid.UUID, language: str) -> SegmentsOut:
        record = await review_db.language_record(self.state.pool, key.id, job_id, language)
        base, fit = await self._base(record)
        state = ReviewState.from_json(record.edits) if record.edits else base
        return _segments_out(job_id, language, record, state, fit)

    async def edit(
        self,
        key: ApiKey,
        job_id: uuid.UUID,
        language: str,
        patch: SegmentsPatch,
        if_match: str | None,
    ) -> SegmentsOut:
        if not if_match:
            raise PreconditionRequired(
                "send If-Match with the ETag of the segments you edited (GET .../segments)"
            )
        async with self.state.pool.acquire() as conn, conn.transaction():
            record = await review_db.language_record(conn, key.id, job_id, language, lock=True)
            base, fit = await self._base(record)
            current = ReviewState.from_json(record.edits) if record.edits else base
            if if_match.strip() not in (current.etag, "*"):
                raise PreconditionFailed(
                    "the segments changed since you read them; read them again and re-apply"
                    " your edit",
                    detail={"etag": current.etag},
                )
            speakers = {s.speaker for s in base.segments} | set(base.speaker_voices)
            voices = await self._voices(record)
            edited = apply(
                current,
                patch,
                duration=_duration(record),
                speakers=speakers,
                voices=voices,
                taken_ids=[s.id for s in base.segments],
            )
            await review_db.save_edits(conn, job_id, language, edited.to_json())
        return _segments_out(job_id, language, record, edited, fit, edited=True)

    async def render(
        self, key: ApiKey, job_id: uuid.UUID, language: str, if_match: str | None
    ) -> tuple[int, str]:
        """Re-queue the language with its edited segments; returns (version, job status)."""
        async with self.state.pool.acquire() as conn, conn.transaction():
            record = await review_db.language_record(conn, key.id, job_id, language, lock=True)
            base, _ = await self._base(record)
            state = ReviewState.from_json(record.edits) if record.edits else base
            if if_match and if_match.strip() not in (state.etag, "*"):
                raise PreconditionFailed(
                    "the segments changed since you read them", detail={"etag": state.etag}
                )
            review = {
                "state": state.to_json(),
                "base": record.stages["translate"]["translation"],
                "gain_db": record.metrics.get("mix", {}).get("gain_db"),
                # the speech of the run before, one object (orchestrator.revise.SpeechCache)
                "speech_cache": record.stages.get("synthesize", {}).get("speech_cache"),
            }
            version = await review_db.start_render(
                conn,
                self.state.settings,
                key.id,
                job_id,
                language,
                record,
                review,
                key.max_concurrent_jobs,
            )
        return version, "queued"

    async def version_files(
        self, key: ApiKey, job_id: uuid.UUID, language: str, version: int
    ) -> list[OutputFile]:
        """The files of an earlier version of the language's outputs; 404 when there is none."""
        job = await jobs_db.target_of(self.state.pool, key.id, job_id, language)
        if job is None:
            raise job_not_found(job_id)
        if job["status"] is None:
            raise NotFound(
                f"the job has no target language {language!r}", code="language_not_in_job"
            )
        rows = (await review_db.versions(self.state.pool, job_id, language)).get(version)
        if not rows:
            raise NotFound(
                f"no earlier version {version} of {language!r} (the current one is served by"
                " .../outputs/{language})",
                code="version_not_found",
            )
        return _version_files(self.state, job_id, language, version, rows, job["input_filename"])

    async def _base(
        self, record: review_db.LanguageRecord
    ) -> tuple[ReviewState, dict[int, dict[str, Any]]]:
        """The state the stages left, and its segments' timing figures by id (an added
        segment has none until a render)."""
        translate = record.stages.get("translate")
        if translate is None or "translation" not in translate:
            raise Conflict(
                f"the language has no translated segments yet; it is {record.status}",
                code="segments_not_ready",
                detail={"status": record.status},
            )
        translation = await self._json(translate["translation"])
        voices_key = record.stages.get("assign_voices", {}).get("voices")
        voices = await self._json(voices_key) if voices_key else None
        base = from_stage_files(translation, voices)
        timing_key = record.stages.get("synthesize", {}).get("timing")
        fit: dict[int, dict[str, Any]] = {}
        if timing_key:
            timings = (await self._json(timing_key))["segments"]
            if len(timings) == len(base.segments):  # timing.json lists them in the same order
                fit = {s.id: t for s, t in zip(base.segments, timings, strict=True)}
        return base, fit

    async def _voices(self, record: review_db.LanguageRecord) -> set[str]:
        voices_key = record.stages.get("assign_voices", {}).get("voices")
        if not voices_key:
            return set()
        # The cast's voices and their pitch variants (polydub.voice_catalog), as /voices lists.
        return voice_ids([str(v["id"]) for v in (await self._json(voices_key))["voices"]])

    async def _json(self, key: str) -> Any:
        return json.loads(await self.state.store.get_bytes(key))


async def earlier_versions(
    state: AppState, job_id: uuid.UUID, language: str, input_filename: str | None
) -> list[OutputVersion]:
    """The versions a render replaced (``.../versions/{n}`` serves each alone), oldest first."""
    found = await review_db.versions(state.pool, job_id, language)
    return [
        OutputVersion(
            version=version,
            created_at=max(row["created_at"] for row in rows),
            files=_version_files(state, job_id, language, version, rows, input_filename),
        )
        for version, rows in sorted(found.items())
    ]


def _version_files(
    state: AppState,
    job_id: uuid.UUID,
    language: str,
    version: int,
    rows: list[asyncpg.Record],
    input_filename: str | None,
) -> list[OutputFile]:
    files = []
    for row in rows:
        name = download_name(input_filename, language, row["kind"], version)
        files.append(
            OutputFile(
                kind=row["kind"],
                url=download_link(state, job_id, row["object_key"], name),
                content_type=row["content_type"],
                size_bytes=row["size_bytes"],
                filename=name,
            )
        )
    return files


def _duration(record: review_db.LanguageRecord) -> float:
    return float(record.stages.get("extract_audio", {}).get("duration") or 0.0)


_FIT = ("rate", "stretch", "borrowed", "overflow", "natural_duration", "dubbed_duration")


def _segments_out(
    job_id: uuid.UUID,
    language: str,
    record: review_db.LanguageRecord,
    state: ReviewState,
    fit: dict[int, dict[str, Any]],
    *,
    edited: bool | None = None,
) -> SegmentsOut:
    return SegmentsOut(
        job_id=str(job_id),
        language=language,
        etag=state.etag,
        version=record.output_version,
        edited=bool(record.edits) if edited is None else edited,
        voices=state.speaker_voices,
        segments=[
            SegmentOut(
                id=s.id,
                start=s.start,
                end=s.end,
                speaker=s.speaker,
                source_text=s.source_text,
                translation=s.translation,
                voice=state.voice_of(s),
                fit={k: f[k] for k in _FIT if k in f} if (f := fit.get(s.id)) else None,
            )
            for s in state.segments
        ],
    )
