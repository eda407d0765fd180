"""Webhook delivery: a POST per terminal state of a job or of one of its languages, signed,
retried.

Deliveries are rows of ``webhook_deliveries`` (unique per job, state, language and destination,
written in the same
transaction as the state change by whoever makes it: the orchestrator or the API's cancel), so a
state is delivered once however many replicas run this worker. A worker leases due rows with
``FOR UPDATE SKIP LOCKED`` (pushing next_attempt_at past the request timeout), POSTs, and marks
the row delivered, or schedules the next attempt with exponential backoff (equal jitter), or
gives up after ``api_webhook_max_attempts``. The statements are ``polydub.api.db.webhooks``'s.

Destinations: the job's ``callback_url`` and every webhook endpoint of its key
(``/api/v1/webhooks``). Events: ``job.succeeded``, ``job.partially_succeeded`` (it succeeded, but
a target language failed), ``job.failed``, ``job.cancelled``, ``job.review_ready`` (a
``review`` job's languages wait for a person: the job is in 'review', not finished; sent once per
job), and per target language ``job.language.succeeded`` / ``job.language.failed`` /
``job.language.cancelled`` / ``job.language.review_ready`` (with ``language``). Each carries the job as ``GET /jobs/{id}`` answers it (its name and metadata too).

Signed per the Standard Webhooks spec (https://www.standardwebhooks.com), so an off-the-shelf
verifier (the ``standardwebhooks`` package, Svix's libraries) checks it with the key's secret
(``whsec_...``, shown by ``polydub keys create``; stored encrypted)::

    webhook-id: <delivery id, the same on every retry>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>." + raw body)>

The older ``Polydub-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
is still sent beside them for receivers written against it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from standardwebhooks import Webhook

from polydub.api.db import jobs as jobs_db
from polydub.api.db import webhooks as webhooks_db
from polydub.api.job_view import job_json
from polydub.api.secrets_at_rest import SecretBox
from polydub.errors import InvalidInput, classify
from polydub.retry import Backoff
from polydub.settings import Settings

log = logging.getLogger("polydub.api.webhooks")

SIGNATURE_HEADER = "Polydub-Signature"
# Recording a delivered webhook through a PostgreSQL outage.
_RECORD_RETRY = Backoff(base=0.2, cap=2.0, jitter="equal")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float = 300.0) -> bool:
    """What a receiver does: recompute, compare in constant time, reject stale timestamps."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts['v1']}")


def event_type(state: str, language: str, job: dict[str, Any]) -> str:
    """``job.<state>``, ``job.language.<state>`` for a language's own event, and
    ``job.partially_succeeded`` for a job that succeeded while a target language did not.
    State ``review`` is ``review_ready``: the segments wait for a person, nothing finished."""
    if state == "review":
        state = "review_ready"
    if language:
        return f"job.language.{state}"
    if state == "succeeded" and any(t["status"] != "succeeded" for t in job["targets"]):
        return "job.partially_succeeded"
    return f"job.{state}"


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: standard base64 (keys made now), or the URL-safe
    base64 of keys made before; the same bytes a receiver gets by writing ``-`` as ``+`` and
    ``_`` as ``/``. Decoded here, not by the package, which drops URL-safe characters."""
    body = secret.removeprefix("whsec_").rstrip("=").translate(_URLSAFE)
    return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)


_URLSAFE = str.maketrans("-_", "+/")


def standard_headers(secret: str, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt."""
    at = datetime.fromtimestamp(timestamp, UTC)
    signature = Webhook(secret_bytes(secret)).sign(delivery_id, at, body)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


def check_callback_url(url: str, settings: Settings) -> None:
    """At submit: literal private addresses and localhost are refused unless allowed."""
    if settings.api_webhook_allow_private:
        return
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise InvalidInput("callback_url may not point at this host", code="callback_not_allowed")
    with contextlib.suppress(ValueError):
        if not _is_public(host):
            raise InvalidInput(
                "callback_url may not point at a private address", code="callback_not_allowed"
            )


async def _resolves_public(url: str) -> bool:
    """At delivery: every address the name resolves to must be public (DNS rebinding)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return bool(infos) and all(_is_public(str(info[4][0])) for info in infos)


def backoff_seconds(attempt: int, settings: Settings) -> float:
    backoff = Backoff(
        settings.api_webhook_backoff_base_seconds,
        settings.api_webhook_backoff_max_seconds,
        jitter="equal",
    )
    return backoff.delay(attempt)


class WebhookSender:
    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, client: httpx.AsyncClient | None = None
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.box = SecretBox.from_settings(settings)
        self.client = client or httpx.AsyncClient(
            timeout=settings.api_webhook_timeout_seconds, follow_redirects=False
        )

    async def close(self) -> None:
        await self.client.aclose()

    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.api_webhook_timeout_seconds * 3 + 5)

    async def _claim(self, batch: int) -> list[asyncpg.Record]:
        return await webhooks_db.claim_due(self.pool, batch, self._lease())

    async def _payload(self, delivery: asyncpg.Record) -> tuple[bytes, str | None] | None:
        row = await jobs_db.job_for_webhook(self.pool, delivery["job_id"])
        if row is None:
            return None
        job = job_json(row, self.settings)
        now = datetime.now(UTC).isoformat()
        body = {
            "id": str(delivery["id"]),
            "type": event_type(delivery["state"], delivery["language"], job),
            "state": delivery["state"],
            "language": delivery["language"] or None,
            "timestamp": now,  # the Standard Webhooks payload's field
            "created_at": now,
            "job": job,
        }
        stored = row["webhook_secret"]  # encrypted at rest (secrets_at_rest)
        return json.dumps(body, default=str).encode(), self.box.reveal(stored) if stored else None

    async def _finish(
        self, delivery: asyncpg.Record, ok: bool, error: str | None, *, final: bool = False
    ) -> None:
        if ok:
            await self._mark_delivered(delivery["id"])
            return
        give_up = final or delivery["attempts"] >= self.settings.api_webhook_max_attempts
        delay = timedelta(seconds=backoff_seconds(delivery["attempts"], self.settings))
        await webhooks_db.mark_attempt_failed(
            self.pool, delivery["id"], give_up=give_up, error=(error or "")[:500], retry_in=delay
        )

    async def _mark_delivered(self, delivery_id: int) -> None:
        """Record a delivery the receiver accepted. Not recorded, it is sent again when its lease
        ends (same id, so receivers that dedupe drop it, as Standard Webhooks asks): ride out a
        brief PostgreSQL outage (a restart, a failover) for up to half the lease first."""
        deadline = time.monotonic() + self._lease().total_seconds() / 2
        attempt = 0
        while True:
            try:
                await webhooks_db.mark_delivered(self.pool, delivery_id)
                return
            except Exception as exc:
                error = classify(exc)
                attempt += 1
                pause = _RECORD_RETRY.delay(attempt)
                if not error.retryable or time.monotonic() + pause > deadline:
                    raise error from exc
                await asyncio.sleep(pause)

    async def deliver(self, delivery: asyncpg.Record) -> bool:
        built = await self._payload(delivery)
        if built is None:
            return False  # the job was purged; the row went with it
        body, secret = built
        event = json.loads(body)["type"]
        url = delivery["url"]
        try:
            if not self.settings.api_webhook_allow_private and not await _resolves_public(url):
                await self._finish(
                    delivery, False, "callback resolves to a private address", final=True
                )
                return False
        except OSError as exc:
            await self._finish(delivery, False, f"resolve failed: {exc}")
            return False
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "polydub-webhooks/1",
            "Polydub-Event": event,
            "Polydub-Delivery": str(delivery["id"]),
            "Polydub-Attempt": str(delivery["attempts"]),
        }
        if secret:
            now = int(time.time())
            headers[SIGNATURE_HEADER] = sign(secret, now, body)
            headers.update(standard_headers(secret, str(delivery["id"]), now, body))
        try:
            response = await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            await self._finish(delivery, False, f"{type(exc).__name__}: {exc}")
            return False
        ok = 200 <= response.status_code < 300
        await self._finish(delivery, ok, None if ok else f"HTTP {response.status_code}")
        return ok

    async def deliver_due(self, batch: int = 20) -> int:
        rows = await self._claim(batch)
        if not rows:
            return 0
        results = await asyncio.gather(*(self.deliver(r) for r in rows), return_exceptions=True)
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "webhook delivery crashed",
                    extra={"delivery": row["id"], "error": repr(result)},
                )
        return len(rows)

    async def run(self) -> None:
        while True:
            try:
                if await self.deliver_due():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook pass failed", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.api_webhook_poll_seconds)
