"""Exponential backoff: the one delay policy of every retry loop (Triton calls, NATS nak delays,
webhook deliveries, the client SDK, reconnect and relay loops).

The loops themselves differ (a nak, a row's next_attempt_at, a sleep), so this computes the
delay only; each loop keeps its own decision of whether to retry at all. ``RetryBudget`` is one
such decision shared by a whole process: retries at most a fraction of the requests.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# none: the bare exponential. full: uniform in [0, d], so many clients that failed together do
# not retry in lockstep. equal: uniform in [d/2, d], spread out but never much sooner than d.
Jitter = Literal["none", "full", "equal"]


@dataclass(frozen=True)
class Backoff:
    base: float  # seconds before the first retry
    cap: float  # never longer than this
    jitter: Jitter = "none"

    def delay(self, retry: int) -> float:
        """Seconds to wait before the ``retry``-th retry (1 is the first): ``base * 2**(retry-1)``,
        capped, then jittered."""
        ceiling = float(min(self.cap, self.base * 2 ** max(retry - 1, 0)))
        if self.jitter == "full":
            return random.uniform(0, ceiling)
        if self.jitter == "equal":
            return random.uniform(ceiling / 2, ceiling)
        return ceiling


@dataclass
class _Bucket:
    """One slot of a ``RetryBudget``'s window: what was counted in it (mutable while current)."""

    slot: int  # clock // slot width
    requests: int = 0
    retries: int = 0


class RetryBudget:
    """How many retries a whole process may make: at most ``ratio`` of the requests started in
    the last ``window`` seconds, plus ``min_retries`` per window so that a quiet process can
    still ride out a server restart.

    A per-request attempt limit alone multiplies load under overload: when every request times
    out, every request retries, and the server does the work 2-4 times. A budget shared by all
    the clients of a process caps the extra load at ``ratio`` (e.g. 10 %) whatever the number of
    requests failing; beyond it the caller surfaces the error (a job is redelivered later).

    Counts live in ``slots`` buckets of ``window / slots`` seconds, so memory stays fixed.
    Not thread-safe: one event loop's clients share it.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        window: float = 60.0,
        min_retries: int = 10,
        *,
        slots: int = 12,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or window <= 0 or min_retries < 0 or slots < 1:
            raise ValueError("need ratio >= 0, window > 0, min_retries >= 0, slots >= 1")
        self.ratio = ratio
        self.window = window
        self.min_retries = min_retries
        self._width = window / slots
        self._slots = slots
        self._clock = clock
        self._buckets: deque[_Bucket] = deque()  # oldest first
        self.refused = 0  # retries refused since start (a metric, never reset)

    def record_request(self) -> None:
        """A request's first attempt (retries are counted by ``try_retry``)."""
        self._bucket().requests += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget has one left; False (and counted) when it is spent."""
        if self.available() < 1:
            self.refused += 1
            return False
        self._bucket().retries += 1
        return True

    def available(self) -> float:
        """Retries that may still be made now."""
        self._expire()
        requests = sum(b.requests for b in self._buckets)
        retries = sum(b.retries for b in self._buckets)
        return self.min_retries + self.ratio * requests - retries

    def retries(self) -> int:
        """Retries spent within the window."""
        self._expire()
        return sum(b.retries for b in self._buckets)

    def _expire(self) -> int:
        now = int(self._clock() // self._width)
        while self._buckets and self._buckets[0].slot <= now - self._slots:
            self._buckets.popleft()
        return now

    def _bucket(self) -> _Bucket:
        now = self._expire()
        if not self._buckets or self._buckets[-1].slot != now:
            self._buckets.append(_Bucket(now))
        return self._buckets[-1]
