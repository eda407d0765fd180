"""The job's vocabulary, one definition shared by every tier: its statuses, the kinds of file it
delivers, the queue message that hands it to a worker, where its objects live in the bucket, and
the one writer of its events and of its webhook deliveries.

The API and the workers meet only through PostgreSQL, NATS and S3; what they say there is
defined here, so a status, a kind or a key cannot be spelled two ways.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from polydub.errors import InvalidInput

if TYPE_CHECKING:
    import asyncpg
    from nats.aio.client import Client as NATS

    from polydub.settings import Settings


class JobStatus(StrEnum):
    """A job's status, and each of its target languages'."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A language of a ``review`` job whose segments wait for a person (and a render), and the
    # job while any of its languages waits so: not finished, no worker holds it.
    REVIEW = "review"


# Finished: nothing more happens to a job in one of these until it is retried (and a rendered
# language re-queues it).
TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)
# Nothing happens until someone acts (a render approves a language in review, a retry): where a
# follower (SSE stream, ``Client.wait``, ``polydub dub``) stops.
SETTLED: frozenset[JobStatus] = TERMINAL | {JobStatus.REVIEW}
# What counts against a key's concurrent-job quota, and what a purge must wait for.
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class ArtifactKind(StrEnum):
    """The deliverables of one target language (``GET /jobs/{id}/outputs/{language}``)."""

    DUBBED_VIDEO = "dubbed_video"
    DUBBED_AUDIO = "dubbed_audio"
    SUBTITLES_SRT = "subtitles_srt"
    SUBTITLES_VTT = "subtitles_vtt"
    SOURCE_SUBTITLES_SRT = "source_subtitles_srt"
    SOURCE_SUBTITLES_VTT = "source_subtitles_vtt"
    TRANSCRIPT = "transcript"
    QUALITY_REPORT = "quality_report"
    # The preview rendition (small H.264/AAC MP4) of a dubbed video whose codec MP4 cannot
    # hold by copy (VP8, Theora): previews of that video are cut from it (polydub.media.preview).
    PREVIEW_VIDEO = "preview_video"


@dataclass(frozen=True)
class JobMessage:
    """The JetStream message that hands a job to a worker: its id, nothing else (the worker
    reads the job from PostgreSQL). ``retry`` is 0 on submit and n after the n-th retry, so each
    retry gets a message id of its own that the stream's duplicate window does not drop."""

    job_id: uuid.UUID
    retry: int = 0

    @property
    def msg_id(self) -> str:
        """``Nats-Msg-Id``: the job id alone on submit, ``<job>:retry:<n>`` after."""
        return str(self.job_id) if self.retry == 0 else f"{self.job_id}:retry:{self.retry}"

    def to_json(self) -> dict[str, Any]:
        # "attempt_hint" is the field's name on the wire since the first release: messages
        # already queued keep parsing.
        return {"job_id": str(self.job_id), "attempt_hint": self.retry}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json()).encode()

    @classmethod
    def from_json(cls, data: Any) -> JobMessage:
        try:
            job_id = uuid.UUID(str(data["job_id"]))
            retry = int(data.get("attempt_hint") or 0)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InvalidInput(
                "the job message has no valid job_id", code="malformed_job_message"
            ) from None
        return cls(job_id, retry)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> JobMessage:
        try:
            parsed = json.loads(data or b"")
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput(
                "the job message is not JSON", code="malformed_job_message"
            ) from None
        return cls.from_json(parsed)


@dataclass(frozen=True)
class JobKeys:
    """Where a job's objects live in the bucket. Everything of a job is under its three prefixes
    (where a presigned upload lands, the input the server keeps, and what the stages made), so a
    purge deletes by prefix."""

    job_id: uuid.UUID

    @property
    def input_prefix(self) -> str:
        return f"inputs/{self.job_id}/"

    @property
    def input(self) -> str:
        """The media the job reads: written by the server only (the multipart intake, or the
        copy of an accepted presigned upload), never through a client's signed form."""
        return f"{self.input_prefix}source"

    # Every presigned upload lands under here; what no reservation owns is swept.
    UPLOADS_ROOT = "uploads/"

    @property
    def upload_prefix(self) -> str:
        return f"{self.UPLOADS_ROOT}{self.job_id}/"

    @property
    def upload(self) -> str:
        """Where a presigned upload lands (its id becomes the job's). Its form stays signed
        until it expires, so no job ever reads this key: it is copied to ``input`` on accept."""
        return f"{self.upload_prefix}source"

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}/"

    @property
    def prefixes(self) -> tuple[str, str, str]:
        return (self.upload_prefix, self.input_prefix, self.prefix)

    def stage(self, stage: str, language: str, filename: str, attempt: int | None = None) -> str:
        """A stage's output. ``language`` is "" for a job-scope stage. With ``attempt`` (what
        the worker uses) the key is the attempt's own: a fenced-out attempt that writes late
        writes beside the newer attempt's object, never over it."""
        folder = f"{self.prefix}{stage}/{language or '_'}/"
        return f"{folder}{filename}" if attempt is None else f"{folder}a{attempt}/{filename}"

    # Not a stage: content-addressed speech a render reuses (orchestrator.revise.SpeechCache).
    SPEECH_CACHE = "tts"

    def speech_cache(self, language: str) -> str:
        """The prefix of a language's cached TTS audio, one object per (text, voice, rate, seed)."""
        return f"{self.prefix}{self.SPEECH_CACHE}/{language}/"

    def preview(self, language: str, start: float, end: float, ext: str) -> str:
        """A preview clip, keyed by its range in ms: the same range is cut once."""
        return f"{self.prefix}previews/{language}/{round(start * 1000)}-{round(end * 1000)}.{ext}"


EventType = Literal["state", "progress", "target"]


async def record_event(
    conn: asyncpg.Connection, job_id: uuid.UUID, type_: EventType, data: Mapping[str, Any]
) -> dict[str, Any]:
    """Append to the job's event log, in the caller's transaction (with the change it records);
    returns the event as followers receive it (SSE, WebSocket)."""
    event_id: int = await conn.fetchval(
        "INSERT INTO job_events (job_id, type, data) VALUES ($1, $2, $3) RETURNING id",
        job_id,
        type_,
        dict(data),
    )
    return {"id": event_id, "type": type_, **data}


async def record_webhook_delivery(
    conn: asyncpg.Connection,
    job_id: uuid.UUID,
    state: JobStatus | str,
    url: str | None,
    *,
    language: str = "",
) -> None:
    """Queue the webhooks of a terminal state, in the caller's transaction (with the state
    change): to the job's callback ``url`` (if any) and to each webhook endpoint of the job's
    key. ``language`` set: that target language's own event, else the job's. One row per job,
    state, language and destination, so each is delivered once however many write it."""
    await conn.execute(
        """
        INSERT INTO webhook_deliveries (job_id, state, language, url)
        SELECT $1, $2, $3, destination.url
          FROM (SELECT $4::text AS url WHERE $4::text IS NOT NULL
                UNION
                SELECT e.url FROM webhook_endpoints e JOIN jobs j ON j.owner_id = e.owner_id
                 WHERE j.id = $1) AS destination
        ON CONFLICT (job_id, state, language, url) DO NOTHING
        """,
        job_id,
        str(state),
        language,
        url,
    )


async def publish_event(
    nc: NATS | None, settings: Settings, job_id: uuid.UUID, event: Mapping[str, Any]
) -> None:
    """Wake the job's followers in every API replica, once the event is committed. Best effort:
    the row is the record, and followers poll it anyway when a wake-up is lost."""
    if nc is None:
        return
    # Here, not at the top: the client SDK imports this module and needs no NATS client.
    from polydub.infra.queue import progress_subject

    with contextlib.suppress(Exception):
        await nc.publish(
            progress_subject(settings, str(job_id)),
            json.dumps({"job_id": str(job_id), **event}, default=str).encode(),
        )
