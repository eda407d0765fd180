"""Exponential backoff: the one delay policy of every retry loop (Triton calls, NATS nak delays,
webhook deliveries, the client SDK, reconnect and relay loops).

The loops themselves differ (a nak, a row's next_attempt_at, a sleep), so this computes the
delay only; each loop keeps its own decision of whether to retry at all.
"""

from __future__ import annotations

import random
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
