"""The keys this replica has authenticated, kept for a while so a status poll costs no key lookup.

A cached key must never outlive its revocation. Migration 0009's trigger sends a NOTIFY on
``polydub_api_keys`` for any change to a key row (``polydub keys revoke``, or SQL by hand), and
each replica listens on a connection of its own and evicts that key at once. The cache is used
only while that connection is up: when it drops, the cache is emptied and every request looks
its key up again until the listener is back, so no revocation is ever missed. ``ttl`` bounds
how long an entry lives even so.

A lookup that started before an eviction must not put back the row it read: ``generation``
counts evictions, and ``put`` refuses an entry read under an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from polydub.retry import Backoff

if TYPE_CHECKING:
    from polydub.api.auth import ApiKey

log = logging.getLogger("polydub.api")

CHANNEL = "polydub_api_keys"
# The payload of a change to the whole table (TRUNCATE): a key prefix is 12 hex characters.
ALL_KEYS = "*"


class KeyCache:
    def __init__(
        self, ttl: float, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.clock = clock
        self.listening = False
        self.generation = 0
        self._entries: OrderedDict[str, tuple[bytes, ApiKey, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.listening and self.ttl > 0

    def get(self, prefix: str, key_hash: bytes) -> ApiKey | None:
        if not self.enabled:
            return None
        entry = self._entries.get(prefix)
        if entry is None:
            return None
        stored, key, expires = entry
        if self.clock() >= expires:
            del self._entries[prefix]
            return None
        # The whole key is compared, not just its public prefix.
        if not hmac.compare_digest(stored, key_hash):
            return None
        self._entries.move_to_end(prefix)
        return key

    def put(self, prefix: str, key_hash: bytes, key: ApiKey, generation: int) -> None:
        if not self.enabled or generation != self.generation:
            return
        self._entries[prefix] = (key_hash, key, self.clock() + self.ttl)
        self._entries.move_to_end(prefix)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)

    def evict(self, prefix: str) -> None:
        self.generation += 1
        self._entries.pop(prefix, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    async def listen(self, dsn: str) -> None:
        """Run until cancelled: hold the listening connection, reconnecting with backoff."""
        backoff = Backoff(0.2, 5.0)
        failures = 0
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(dsn)
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                # A lookup that began while nobody listened may have read a key revoked before
                # LISTEN took effect: the new generation keeps it out of the cache.
                self.clear()
                self.listening, failures = True, 0
                await self._hold(conn, lost)
                log.warning("the API key listener lost its connection; keys are looked up")
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                failures += 1
                log.warning("API key listener not connected", extra={"error": str(exc)})
            finally:
                self.listening = False
                self.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(backoff.delay(max(failures, 1)))

    async def _hold(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        # A connection cut without a FIN would never report its end: a ping within each ttl
        # finds it, and the failed ping ends the listening.
        interval = max(self.ttl / 2, 1.0)
        while True:
            try:
                await asyncio.wait_for(lost.wait(), timeout=interval)
                return
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=5)

    def _notified(self, _conn: Any, _pid: int, _channel: str, prefix: str) -> None:
        if prefix == ALL_KEYS:
            self.clear()
        else:
            self.evict(prefix)
