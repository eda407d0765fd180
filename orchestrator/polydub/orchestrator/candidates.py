"""Pick, among a segment's n-best translations, the one that will fit its time slot best.

Speech duration is estimated from characters (speaking rates in characters per second vary less
across languages than words do). Only candidates close to the best in model score are eligible,
so fit never buys a clearly worse translation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

CHARS_PER_SECOND = 15.0  # typical TTS speaking rate at rate 1.0
SCORE_MARGIN = 0.3  # length-normalised log-probability below the best still acceptable


class Candidate(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def score(self) -> float: ...


def estimated_seconds(text: str, chars_per_second: float = CHARS_PER_SECOND) -> float:
    return len(text.strip()) / chars_per_second


def pick_candidate(
    candidates: Sequence[Candidate],
    slot_seconds: float,
    *,
    margin: float = SCORE_MARGIN,
    chars_per_second: float = CHARS_PER_SECOND,
) -> int:
    """Index of the chosen candidate (candidates are best-first)."""
    if not candidates:
        raise ValueError("no candidates")
    best = candidates[0].score
    eligible = [i for i, c in enumerate(candidates) if c.text.strip() and c.score >= best - margin]
    if not eligible:
        return 0

    def misfit(i: int) -> float:
        # Too long costs more than too short: a long line must be sped up or stretched.
        over = estimated_seconds(candidates[i].text, chars_per_second) - slot_seconds
        return over * 2.0 if over > 0 else -over

    return min(eligible, key=lambda i: (round(misfit(i), 3), i))
