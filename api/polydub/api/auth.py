"""API keys: ``pd_<prefix>_<secret>``, stored as the sha256 of the whole key, never in clear.

The prefix (12 hex characters) is public and finds the row; the secret is 256 random bits, so a
plain sha256 is enough (no slow hash needed: there is nothing to brute-force). Keys are created
and revoked with ``polydub keys create|revoke``; the full key is shown once, at creation.
Each key also gets a webhook signing secret, shown at creation, that signs its job callbacks;
it is stored encrypted (``polydub.api.secrets_at_rest``).
The rows are read and written by ``polydub.api.db.keys``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from polydub.api.db import keys as keys_db
from polydub.api.errors import Unauthenticated
from polydub.api.key_cache import KeyCache
from polydub.api.secrets_at_rest import SecretBox
from polydub.errors import NotFound
from polydub.settings import get_settings

KEY_RE = re.compile(r"^pd_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    prefix: str
    rate_limit_per_minute: int
    max_concurrent_jobs: int


@dataclass(frozen=True)
class NewKey:
    """What ``keys create`` prints once: the key and the webhook secret exist nowhere else."""

    id: uuid.UUID
    name: str
    key: str
    prefix: str
    webhook_secret: str
    rate_limit_per_minute: int
    max_concurrent_jobs: int


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def generate_key() -> tuple[str, str]:
    prefix = secrets.token_hex(6)
    return f"pd_{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


async def authenticate(
    conn: asyncpg.Connection | asyncpg.Pool, key: str | None, cache: KeyCache | None = None
) -> ApiKey:
    """The key's row as an ``ApiKey``; from ``cache`` when it holds this very key."""
    if not key:
        raise Unauthenticated(
            "an API key is required: Authorization: Bearer pd_... or X-API-Key",
            code="unauthenticated",
        )
    match = KEY_RE.match(key)
    if match is None:
        raise Unauthenticated("the API key is malformed", code="invalid_api_key")
    digest = hash_key(key)
    if cache is not None and (cached := cache.get(match[1], digest)) is not None:
        return cached
    generation = cache.generation if cache is not None else 0
    row = await keys_db.key_by_prefix(conn, match[1])
    # compare_digest even when the row is missing, so timing tells nothing about prefixes.
    stored = bytes(row["key_hash"]) if row is not None else b"\0" * 32
    if not hmac.compare_digest(stored, digest) or row is None:
        raise Unauthenticated("the API key is not valid", code="invalid_api_key")
    if row["revoked_at"] is not None:
        raise Unauthenticated("the API key has been revoked", code="api_key_revoked")
    found = ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        rate_limit_per_minute=row["rate_limit_per_minute"],
        max_concurrent_jobs=row["max_concurrent_jobs"],
    )
    if cache is not None:
        cache.put(match[1], digest, found, generation)
    return found


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    name: str,
    *,
    rate_limit_per_minute: int = 600,
    max_concurrent_jobs: int = 100,
    box: SecretBox | None = None,
) -> NewKey:
    """``box`` encrypts the webhook secret; by default, with the process's settings' keys."""
    box = box or SecretBox.from_settings(get_settings())
    key, prefix = generate_key()
    key_id = uuid.uuid4()
    # Standard Webhooks' form: "whsec_" + the key's bytes in standard base64, as every
    # off-the-shelf verifier decodes it.
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    await keys_db.insert_key(
        conn,
        key_id=key_id,
        name=name,
        prefix=prefix,
        key_hash=hash_key(key),
        rate_limit_per_minute=rate_limit_per_minute,
        max_concurrent_jobs=max_concurrent_jobs,
        webhook_secret=box.seal(webhook_secret),
    )
    return NewKey(
        key_id, name, key, prefix, webhook_secret, rate_limit_per_minute, max_concurrent_jobs
    )


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, ident: str) -> datetime:
    """Revoke by prefix, id or whole key; returns when. Revoking twice keeps the first time."""
    match = KEY_RE.match(ident)
    prefix = match[1] if match else ident
    key_id: uuid.UUID | None = None
    with contextlib.suppress(ValueError):
        key_id = uuid.UUID(ident)
    revoked = await keys_db.revoke(conn, prefix, key_id)
    if revoked is None:
        raise NotFound(f"no API key {ident!r}", code="api_key_not_found")
    return revoked
