"""The API's wire models: its requests and responses, shared by the server (polydub.api) and
the clients (polydub.client, the CLI), so both read one definition. Every request model forbids
unknown fields (a typo is a 422, never a silently ignored option) and every number it carries is
finite and bounded (``inf``, ``NaN``, ``1e309`` are a 422 naming the field, never a 500); the
OpenAPI schema documents the responses from these."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from polydub.jobs import JobStatus
from polydub.languages import resolve, suggest, unsupported_message

# A float a request may carry (body field or query parameter): a finite number, so "inf",
# "Infinity", "NaN" and 1e309 are refused (pydantic's ``finite_number``) before they reach a
# computation, PostgreSQL or a JSON answer.
FiniteFloat = Annotated[float, AllowInfNan(False)]
# No media polydub takes lasts a week: a bound for every time a request names.
MAX_TIME_SECONDS = 7 * 24 * 3600.0
# A job's metadata, as compact JSON: enough for a caller's ids and tags, small for every answer.
MAX_METADATA_BYTES = 16 * 1024
MAX_NAME_CHARS = 200


class Strict(BaseModel):
    """Base of every request model: unknown fields and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _language(code: str) -> str:
    """The canonical ISO 639-3 code of a tag as people write it (``es``, ``spa``, ``es-ES``)."""
    language = resolve(code)
    if language is None:
        # A named error type: the envelope's code becomes "unsupported_language". Pydantic fills
        # only plain ``{name}`` fields of the template, so the message is built beforehand.
        raise PydanticCustomError(
            "unsupported_language",
            "{message}",
            {"message": unsupported_message(code), "suggestion": suggest(code)},
        )
    return language.code


class JobOptions(Strict):
    """What a job is asked to do. Languages are taken as ISO 639-1, 639-3 or BCP-47 tags
    (``es``, ``spa``, ``es-ES``) and answered as ISO 639-3 codes (``GET /api/v1/languages``)."""

    source_language: str = Field(
        default="auto",
        description="the spoken language (ISO 639-1/639-3/BCP-47; answered as ISO 639-3),"
        " or 'auto' to detect",
    )
    target_languages: Annotated[list[str], Field(min_length=1)]
    num_speakers: Annotated[int, Field(ge=1, le=20)] | None = None
    keep_background: bool = True
    background: Literal["keep", "separate", "drop"] | None = Field(
        default=None,
        description="the original track under the dub: 'keep' it (ducked under speech),"
        " 'separate' its voices out first, or 'drop' it; default: separate when a separation"
        " model is served, else keep ('drop' when keep_background is false)",
    )
    subtitles_only: bool = False
    review: bool = Field(
        default=False,
        description="stop each language after translation (status 'review') until a render"
        " (POST .../languages/{lang}/render) approves its segments",
    )
    start_time: Annotated[FiniteFloat, Field(ge=0, le=MAX_TIME_SECONDS)] | None = None
    end_time: Annotated[FiniteFloat, Field(gt=0, le=MAX_TIME_SECONDS)] | None = None
    callback_url: AnyHttpUrl | None = Field(default=None, max_length=2048)
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = Field(
        default=None, description="the caller's name for the job, echoed in answers and webhooks"
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="a JSON object of the caller's (at most 16 KiB), echoed in answers and"
        " webhooks; in a multipart form, the object as a JSON string",
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_json(cls, value: Any) -> Any:
        # A multipart form carries the object as text.
        if isinstance(value, str | bytes):
            try:
                return json.loads(value)
            except ValueError:
                raise PydanticCustomError(
                    "invalid_metadata", "metadata must be a JSON object"
                ) from None
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise PydanticCustomError(
                "metadata_too_large",
                "metadata is {size} bytes as JSON; at most {limit}",
                {"size": size, "limit": MAX_METADATA_BYTES},
            )
        return value

    @field_validator("source_language")
    @classmethod
    def _source(cls, value: str) -> str:
        return "auto" if value.strip().lower() == "auto" else _language(value)

    @field_validator("target_languages")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        codes: list[str] = []
        for item in value:
            for code in item.split(","):
                if code.strip():
                    checked = _language(code)
                    if checked not in codes:
                        codes.append(checked)
        if not codes:
            raise PydanticCustomError("missing_target_language", "a target language is required")
        return codes

    @model_validator(mode="after")
    def _coherent(self) -> JobOptions:
        if self.source_language in self.target_languages:
            raise PydanticCustomError(
                "same_language", "a target language equals the source language"
            )
        if (
            self.start_time is not None
            and self.end_time is not None
            and self.end_time <= self.start_time
        ):
            raise PydanticCustomError("invalid_time_range", "end_time must be after start_time")
        return self

    def options_json(self) -> dict[str, Any]:
        """The options column the orchestrator reads."""
        return {
            "num_speakers": self.num_speakers,
            "keep_background": self.keep_background,
            "background": self.background,
            "subtitles_only": self.subtitles_only,
            "review": self.review,
            "start_time": self.start_time,
            "end_time": self.end_time,
        }


class JobFromUpload(JobOptions):
    """JSON body of ``POST /jobs`` after a presigned upload (``POST /uploads``)."""

    upload_id: uuid.UUID


class JobFromUrl(JobOptions):
    """JSON body of ``POST /jobs`` naming media to fetch: the worker downloads ``source_url``
    (https, public addresses only, redirects re-checked, size and time capped) when the server
    enables it (``POLYDUB_SOURCE_URL_ENABLED``); else 422 ``source_url_disabled``."""

    source_url: Annotated[str, Field(min_length=1, max_length=2048)]

    def options_json(self) -> dict[str, Any]:
        return {**super().options_json(), "source_url": self.source_url}


class ErrorInfo(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorEnvelope(BaseModel):
    error: ErrorInfo


class WarningInfo(BaseModel):
    """A quality gate's warning: the job went on, but a figure of its quality report says
    what to check (e.g. ``empty_translations``, ``low_language_probability``, ``no_speech``)."""

    code: str
    message: str
    stage: str = Field(description="the stage whose figures raised it")
    language: str | None = Field(
        default=None, description="the target language; null for the whole job (transcription)"
    )


class TargetOut(BaseModel):
    language: str
    status: JobStatus
    stage: str | None
    progress: float
    error: ErrorInfo | None = None
    warnings: list[WarningInfo] = Field(default_factory=list)


class InputOut(BaseModel):
    filename: str | None
    bytes: int | None
    duration_seconds: float | None
    has_video: bool | None


class JobLinks(BaseModel):
    self: str
    events: str
    progress: str
    outputs: dict[str, str]


class JobOut(BaseModel):
    id: uuid.UUID
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: JobStatus
    stage: str | None
    progress: float = Field(description="0..1 over the whole job")
    percent: int
    eta_seconds: float | None
    source_language: str
    detected_language: str | None
    target_languages: list[str]
    targets: list[TargetOut]
    options: dict[str, Any]
    input: InputOut
    callback_url: str | None
    cancel_requested: bool
    retries: int
    error: ErrorInfo | None
    warnings: list[WarningInfo] = Field(
        default_factory=list, description="the job's own, then each target language's"
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    links: JobLinks


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at end")


class JobListQuery(Strict):
    status: JobStatus | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None


class UploadOut(BaseModel):
    """A reserved upload: POST a multipart/form-data body to ``url`` with ``fields`` first and
    the file last (field ``file``). S3 refuses a file over ``max_bytes``, any other key, and
    anything after ``expires_at``; then ``POST /jobs`` with the ``upload_id``."""

    upload_id: uuid.UUID
    url: str
    method: Literal["POST"]
    fields: dict[str, str]
    expires_at: datetime
    max_bytes: int


class OutputFile(BaseModel):
    # A str, not ArtifactKind: links to a kind a newer worker added still answer.
    kind: str = Field(description="an ArtifactKind: dubbed_video, subtitles_srt, ...")
    url: str
    content_type: str
    size_bytes: int
    filename: str


class PreviewOut(BaseModel):
    start: float
    end: float
    url: str
    content_type: str
    size_bytes: int


class OutputVersion(BaseModel):
    """An earlier render of a language's outputs, kept downloadable until the job expires."""

    version: int
    created_at: datetime
    files: list[OutputFile]


class OutputsOut(BaseModel):
    job_id: uuid.UUID
    language: str
    status: JobStatus
    expires_in_seconds: int
    files: list[OutputFile]
    preview: PreviewOut | None = None
    version: int = Field(1, description="the version ``files`` are (1 until a render)")
    versions: list[OutputVersion] = Field(
        default_factory=list, description="the earlier versions, oldest first"
    )


class PurgeOut(BaseModel):
    job_id: uuid.UUID
    deleted_objects: int


class LanguageOut(BaseModel):
    code: str
    name: str
    transcribe: bool = Field(description="speech recognition can take it as the source")
    translate: bool = Field(description="the translation model covers it")
    synthesize: bool = Field(description="a speech-synthesis voice is in the model repository")
    dub_target: bool = Field(description="translate and synthesize: a full dub into it")


class ServedModelOut(BaseModel):
    name: str
    family: str
    checkpoint: str = Field(description="Hub id, local directory, or 'random weights (tiny)'")
    revision: str | None = Field(description="the Hub commit, or a local checkpoint's sha256")
    license: str
    precision: str = Field(description="int8 | fp32 | fp16")
    random_weights: bool = Field(description="random weights: this model's output is noise")


class LanguagesOut(BaseModel):
    auto_detect: bool
    models: list[str]
    served: list[ServedModelOut] = Field(
        default_factory=list, description="where each served model's weights come from"
    )
    random_weights: list[str] = Field(
        default_factory=list, description="model families served with random weights (noise)"
    )
    languages: list[LanguageOut]

    def targets(self, *, subtitles_only: bool = False) -> list[str]:
        """The codes a job can target with these models: a full dub needs translation and a
        voice; subtitles alone need translation only."""
        return [
            lang.code
            for lang in self.languages
            if (lang.translate if subtitles_only else lang.dub_target)
        ]


class WebhookEndpointIn(Strict):
    """An account-level webhook endpoint: every job of the key is delivered to it."""

    url: AnyHttpUrl = Field(max_length=2048)
    description: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None


class WebhookEndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    created_at: datetime


class CheckOut(BaseModel):
    ok: bool
    ms: float
    error: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "ready"]
    checks: dict[str, CheckOut] = Field(default_factory=dict)
