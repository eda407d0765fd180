"""From speaker turns and speech regions to the segments that get transcribed and dubbed.

A segment is one speaker's stretch of speech: the part of a diarization turn that the VAD heard
as speech, with short pauses bridged, no longer than ``max_seconds`` (long monologues are cut at
their longest pauses, else evenly), and not shorter than ``min_seconds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from polydub.orchestrator.records import Segment


class Interval(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...


class Turn(Interval, Protocol):
    @property
    def speaker(self) -> str: ...


@dataclass(frozen=True)
class SegmentPolicy:
    bridge_gap: float = 0.5  # pauses shorter than this stay inside a segment
    max_seconds: float = 15.0  # a dub slot longer than this is hard to fit and to subtitle
    min_seconds: float = 0.3


def make_segments(
    turns: Sequence[Turn],
    speech: Sequence[Interval],
    *,
    window: tuple[float, float],
    policy: SegmentPolicy = SegmentPolicy(),
) -> list[Segment]:
    """Segments in time order, numbered from 0; only speech inside ``window`` counts."""
    lo, hi = window
    pieces: list[tuple[float, float, str]] = []
    for turn in turns:
        for region in speech:
            start, end = max(turn.start, region.start, lo), min(turn.end, region.end, hi)
            if end > start:
                pieces.append((start, end, turn.speaker))
    pieces.sort()
    merged: list[list[Any]] = []  # [start, end, speaker, [internal gaps]]
    for start, end, speaker in pieces:
        last = merged[-1] if merged else None
        if last is not None and last[2] == speaker and start - last[1] < policy.bridge_gap:
            if start > last[1]:
                last[3].append((last[1], start))
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, speaker, []])
    result: list[Segment] = []
    for start, end, speaker, gaps in merged:
        for a, b in _split(start, end, gaps, policy.max_seconds):
            if b - a >= policy.min_seconds:
                result.append(Segment(len(result), round(a, 3), round(b, 3), speaker))
    return result


def _split(
    start: float, end: float, gaps: list[tuple[float, float]], limit: float
) -> list[tuple[float, float]]:
    if end - start <= limit:
        return [(start, end)]
    inside = [g for g in gaps if start < g[0] and g[1] < end]
    if inside:
        # Cut at the longest pause: the most natural place for a new subtitle and dub slot.
        a, b = max(inside, key=lambda g: g[1] - g[0])
        return _split(start, a, gaps, limit) + _split(b, end, gaps, limit)
    parts = int((end - start) // limit) + 1
    step = (end - start) / parts
    return [(start + i * step, start + (i + 1) * step) for i in range(parts)]
