"""Webhook signing secrets are stored encrypted (Fernet: AES-128-CBC + HMAC-SHA256), never in
clear: a copy of the database alone cannot forge a key's webhooks.

The keys come from ``POLYDUB_API_WEBHOOK_SECRET_KEYS`` (comma-separated: the first encrypts,
every one decrypts, so a key is rotated by putting the new one first, restarting, and dropping
the old one once ``seal_clear_secrets`` has re-encrypted every row). Any string works as a key:
its sha256 is the Fernet key, so keep it long and random in production.

A stored value is ``fernet:<token>``. Rows written before encryption hold the secret in clear
(``whsec_...``); ``seal_clear_secrets`` encrypts them in place when the API starts, and
``reveal`` still reads them meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import asyncpg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from polydub.api.db import keys as keys_db
from polydub.errors import ConfigurationError
from polydub.settings import Settings

log = logging.getLogger("polydub.api.secrets")

PREFIX = "fernet:"


class SecretBox:
    def __init__(self, keys: str) -> None:
        names = [k.strip() for k in keys.split(",") if k.strip()]
        if not names:
            raise ConfigurationError(
                "POLYDUB_API_WEBHOOK_SECRET_KEYS is empty", code="webhook_secret_keys_missing"
            )
        self._current = names[0]
        self._fernet = MultiFernet([Fernet(_fernet_key(k)) for k in names])

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(settings.api_webhook_secret_keys)

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet.encrypt(secret.encode()).decode("ascii")

    def reveal(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption; sealed at the next start
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode("ascii")).decode()
        except InvalidToken:
            raise ConfigurationError(
                "a webhook secret does not decrypt with POLYDUB_API_WEBHOOK_SECRET_KEYS"
                " (was a key dropped before every row was re-encrypted?)",
                code="webhook_secret_undecryptable",
            ) from None

    def needs_sealing(self, stored: str) -> bool:
        """Clear, or encrypted with a key other than the current one."""
        if not stored.startswith(PREFIX):
            return True
        token = stored[len(PREFIX) :].encode("ascii")
        try:
            Fernet(_fernet_key(self._current)).decrypt(token)
        except InvalidToken:
            return True
        return False


def _fernet_key(text: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())


async def seal_clear_secrets(pool: asyncpg.Pool, box: SecretBox) -> int:
    """Encrypt (or re-encrypt under the current key) every stored secret that needs it; returns
    how many rows changed. Safe with replicas starting together: each update names the value
    it replaces."""
    changed = unreadable = 0
    for row in await keys_db.webhook_secrets(pool):
        stored: str = row["webhook_secret"]
        if not box.needs_sealing(stored):
            continue
        try:
            sealed = box.seal(box.reveal(stored))
        except ConfigurationError:
            unreadable += 1  # its webhooks wait (never sent unsigned) until the key is back
            continue
        changed += await keys_db.replace_webhook_secret(pool, row["id"], stored, sealed)
    if unreadable:
        log.error(
            "webhook secrets that no configured key decrypts: put the old key back in"
            " POLYDUB_API_WEBHOOK_SECRET_KEYS",
            extra={"rows": unreadable},
        )
    if changed:
        log.info("webhook secrets encrypted", extra={"rows": changed})
    return changed
