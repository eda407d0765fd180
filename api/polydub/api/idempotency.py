"""What makes two ``POST /jobs`` requests "the same" for an ``Idempotency-Key``.

A job created with a key stores the fingerprint of its request (``jobs.idempotency_hash``): the
sha256 of its validated options in canonical JSON (so ``"spa,fra"`` and ``["spa", "fra"]`` are
the same request), with the identity of the content it names: the sha256 of the file sent in a
multipart request, or for a presigned upload the object's size and ETag as the storage server
recorded them when the upload was completed (an S3 POST upload's ETag is its MD5). The upload's
id is left out: a client retrying the whole submission (reserve, upload, create) reserves a new
upload each attempt, and that retry is the same request only when it uploaded the same bytes.
A repeat naming the first job's own upload (whose row is gone once the job exists) is judged by
the size and ETag the job recorded of its copy.

A repeat with the key and the same fingerprint gets the first job back; with another
fingerprint, 422 ``idempotency_mismatch`` (as Stripe answers), never the first job for a
different request. Jobs fingerprinted before content identities (their upload id in the
options, no content) still replay for that same upload id. Jobs from before fingerprints
(NULL) are never compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from polydub.api.db import uploads as uploads_db
from polydub.errors import InvalidInput
from polydub.infra.storage import ObjectStore
from polydub.schemas import JobFromUpload, JobOptions

_CHUNK = 1024 * 1024


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Blocks (reads the whole file): call it through ``asyncio.to_thread``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class UploadContent:
    """What a presigned upload holds, as the storage server recorded it."""

    size: int
    etag: str


def request_hash(
    options: JobOptions, *, file_sha256: str | None = None, upload: UploadContent | None = None
) -> bytes:
    """The fingerprint of a submission: its validated options and the identity of its content:
    a multipart file's sha256, or a JobFromUpload's upload content (``None``: not found, which
    matches no stored job) in place of its upload id, which each retry reserves anew."""
    canonical: dict[str, Any] = {
        "kind": type(options).__name__,
        "options": options.model_dump(mode="json", exclude={"upload_id"}),
        "file_sha256": file_sha256,
    }
    if isinstance(options, JobFromUpload):
        canonical["upload"] = None if upload is None else [upload.size, upload.etag]
    return _digest(canonical)


def legacy_upload_hash(options: JobFromUpload) -> bytes:
    """The fingerprint jobs from a presigned upload were stored with before content identities:
    the options with the upload id, no content."""
    canonical = {
        "kind": type(options).__name__,
        "options": options.model_dump(mode="json"),
        "file_sha256": None,
    }
    return _digest(canonical)


def _digest(canonical: dict[str, Any]) -> bytes:
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


async def upload_request_hashes(
    pool: asyncpg.Pool,
    store: ObjectStore,
    owner: uuid.UUID,
    options: JobFromUpload,
    idempotency_key: str,
) -> tuple[bytes, frozenset[bytes]]:
    """The fingerprint a new job from this upload stores, and the older one a job already made
    from this same upload id may carry (``legacy_upload_hash``). The content is the open
    upload's object, or, when the key's job was made from this very upload (whose row is gone),
    the size and ETag that job recorded of its copy."""
    content: UploadContent | None = None
    upload = await uploads_db.find_upload(pool, options.upload_id, owner)
    if upload is not None and await store.exists(upload["object_key"]):
        sent = await store.stat(upload["object_key"])
        content = UploadContent(sent.size, sent.etag)
    else:
        # The key's job made from this very upload id: the upload's row went with it.
        recorded = await pool.fetchrow(
            "SELECT input_bytes, input_etag FROM jobs"
            " WHERE id = $1 AND owner_id = $2 AND idempotency_key = $3",
            options.upload_id,
            owner,
            idempotency_key,
        )
        if recorded is not None and recorded["input_etag"] is not None:
            content = UploadContent(recorded["input_bytes"], recorded["input_etag"])
    return request_hash(options, upload=content), frozenset({legacy_upload_hash(options)})


def check_same_request(
    job: asyncpg.Record | dict[str, Any],
    fingerprint: bytes | None,
    also: frozenset[bytes] = frozenset(),
) -> None:
    """Raise 422 ``idempotency_mismatch`` if ``job`` was created by a different request:
    its stored fingerprint is neither ``fingerprint`` nor one of ``also`` (older formulas)."""
    stored = job.get("idempotency_hash")
    if stored is None or fingerprint is None or bytes(stored) in {fingerprint, *also}:
        return
    raise InvalidInput(
        "this Idempotency-Key was used for a different request: use a new key for a new job",
        code="idempotency_mismatch",
        detail={"job_id": str(job["id"])},
    )
