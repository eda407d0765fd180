"""A jobs row (with its aggregated targets, as db/jobs.py reads it) in the JobOut shape: what the
routes answer and what a webhook carries."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from polydub.jobs import ArtifactKind
from polydub.settings import Settings

# kind -> (file name suffix, extension) for the Content-Disposition of each output's link
FILE_NAMES: dict[str, tuple[str, str]] = {
    ArtifactKind.DUBBED_VIDEO: ("", "mp4"),
    ArtifactKind.DUBBED_AUDIO: ("", "m4a"),
    ArtifactKind.SUBTITLES_SRT: ("", "srt"),
    ArtifactKind.SUBTITLES_VTT: ("", "vtt"),
    ArtifactKind.SOURCE_SUBTITLES_SRT: (".source", "srt"),
    ArtifactKind.SOURCE_SUBTITLES_VTT: (".source", "vtt"),
    ArtifactKind.TRANSCRIPT: (".transcript", "json"),
    ArtifactKind.QUALITY_REPORT: (".quality", "json"),
    ArtifactKind.PREVIEW_VIDEO: (".preview", "mp4"),
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def download_name(
    input_filename: str | None, language: str, kind: str, version: int | None = None
) -> str:
    """An output's file name, ``<input>.<language>[<suffix>][.v<n>].<ext>`` (``version``: an
    earlier render's file)."""
    # ASCII only: the name ends up in a header; the user's name is cleaned, never trusted.
    stem = (input_filename or "output").rsplit(".", 1)[0]
    stem = _UNSAFE.sub("_", stem).strip("._")[:80] or "output"
    suffix, ext = FILE_NAMES.get(kind, (f".{kind}", "bin"))
    rendered = "" if version is None else f".v{version}"
    return f"{stem}.{language}{suffix}{rendered}.{ext}"


def _api_base(settings: Settings) -> str:
    return settings.api_public_url.rstrip("/") + "/api/v1"


def job_json(row: asyncpg.Record | dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A jobs row (with its aggregated targets) as the JobOut shape."""
    base = f"{_api_base(settings)}/jobs/{row['id']}"
    targets = row["targets"]
    if isinstance(targets, str):
        targets = json.loads(targets)
    media = row["media"] or {}
    target_warnings = {t["language"]: _warnings(t.get("warnings"), t["language"]) for t in targets}
    error = None
    if row["error_code"] or row["error_message"]:
        error = {"code": row["error_code"] or "error", "message": row["error_message"] or ""}
    return {
        "id": row["id"],
        "name": row.get("name"),
        "metadata": row.get("metadata") or {},
        "status": row["status"],
        "stage": row["current_stage"],
        "progress": float(row["progress"]),
        "percent": round(float(row["progress"]) * 100),
        "eta_seconds": row["eta_seconds"],
        "source_language": row["source_language"] or "auto",
        "detected_language": row["detected_language"],
        "target_languages": [t["language"] for t in targets],
        "targets": [
            {
                "language": t["language"],
                "status": t["status"],
                "stage": t["stage"],
                "progress": float(t["progress"]),
                "error": (
                    {"code": t["error_code"] or "error", "message": t["error_message"] or ""}
                    if t["error_code"] or t["error_message"]
                    else None
                ),
                "warnings": target_warnings[t["language"]],
            }
            for t in targets
        ],
        "options": row["options"] or {},
        "input": {
            "filename": row["input_filename"],
            "bytes": row["input_bytes"],
            "duration_seconds": media.get("duration_seconds"),
            "has_video": media.get("has_video"),
        },
        "callback_url": row["callback_url"],
        "cancel_requested": row["cancel_requested"],
        "retries": row["retries"],
        "error": error,
        "warnings": [
            *_warnings(row.get("warnings"), None),
            *(w for t in targets for w in target_warnings[t["language"]]),
        ],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "expires_at": row["expires_at"],
        "links": {
            "self": base,
            "events": f"{base}/events",
            "progress": f"{base}/progress",
            "outputs": {t["language"]: f"{base}/outputs/{t['language']}" for t in targets},
        },
    }


def _warnings(stored: Any, language: str | None) -> list[dict[str, Any]]:
    """Quality-gate warnings as WarningInfo, named by language (None: the whole job's)."""
    if isinstance(stored, str):
        stored = json.loads(stored)
    return [{**w, "language": language} for w in stored or []]
