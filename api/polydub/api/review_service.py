"""Review and re-dub as a service: read a language's segments, edit them (If-Match), render.

The segments are read from what the stages stored (translation.json, voices.json, timing.json
in S3, named by the language's stage records), overlaid with the edits waiting for a render
(a row of segment_edits). The SQL is db/review.py's; routes/segments.py maps HTTP to this.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from polydub.api.auth import ApiKey
from polydub.api.db import review as review_db
from polydub.errors import Conflict, PermanentError
from polydub.review import (
    ReviewState,
    SegmentOut,
    SegmentsOut,
    SegmentsPatch,
    apply,
    from_stage_files,
)

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
                current, patch, duration=_duration(record), speakers=speakers, voices=voices
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

    async def _base(
        self, record: review_db.LanguageRecord
    ) -> tuple[ReviewState, list[dict[str, Any] | None]]:
        """The state the stages left, and each segment's timing figures (None where none)."""
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
        fit: list[dict[str, Any] | None] = [None] * len(base.segments)
        if timing_key:
            timings = (await self._json(timing_key))["segments"]
            if len(timings) == len(fit):
                fit = list(timings)
        return base, fit

    async def _voices(self, record: review_db.LanguageRecord) -> set[str]:
        voices_key = record.stages.get("assign_voices", {}).get("voices")
        if not voices_key:
            return set()
        return {str(v["id"]) for v in (await self._json(voices_key))["voices"]}

    async def _json(self, key: str) -> Any:
        return json.loads(await self.state.store.get_bytes(key))


def _duration(record: review_db.LanguageRecord) -> float:
    return float(record.stages.get("extract_audio", {}).get("duration") or 0.0)


_FIT = ("rate", "stretch", "borrowed", "overflow", "natural_duration", "dubbed_duration")


def _segments_out(
    job_id: uuid.UUID,
    language: str,
    record: review_db.LanguageRecord,
    state: ReviewState,
    fit: list[dict[str, Any] | None],
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
                fit={k: f[k] for k in _FIT if k in f} if f else None,
            )
            for s, f in zip(state.segments, fit, strict=True)
        ],
    )
