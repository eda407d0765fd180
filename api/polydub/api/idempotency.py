"""What makes two ``POST /jobs`` requests "the same" for an ``Idempotency-Key``.

A job created with a key stores the fingerprint of its request (``jobs.idempotency_hash``): the
sha256 of its validated options in canonical JSON (so ``"spa,fra"`` and ``["spa", "fra"]`` are
the same request), with the upload id (JSON body) or the sha256 of the uploaded file
(multipart). A repeat with the key and the same fingerprint gets the first job back; with another
fingerprint, 422 ``idempotency_mismatch`` (as Stripe answers), never the first job for a
different request. Jobs from before fingerprints (NULL) are never compared.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import asyncpg

from polydub.errors import InvalidInput
from polydub.schemas import JobOptions

_CHUNK = 1024 * 1024


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Blocks (reads the whole file): call it through ``asyncio.to_thread``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def request_hash(options: JobOptions, *, file_sha256: str | None = None) -> bytes:
    """The fingerprint of a submission: its validated options (a JobFromUpload's include the
    upload id) and, for a file sent in the request, the file's sha256."""
    canonical = {
        "kind": type(options).__name__,
        "options": options.model_dump(mode="json"),
        "file_sha256": file_sha256,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def check_same_request(job: asyncpg.Record | dict[str, Any], fingerprint: bytes | None) -> None:
    """Raise 422 ``idempotency_mismatch`` if ``job`` was created by a different request."""
    stored = job.get("idempotency_hash")
    if stored is None or fingerprint is None or bytes(stored) == fingerprint:
        return
    raise InvalidInput(
        "this Idempotency-Key was used for a different request: use a new key for a new job",
        code="idempotency_mismatch",
        detail={"job_id": str(job["id"])},
    )
