"""Short speech regions packed into shared Whisper windows, and the decoded segments mapped back
to the regions without moving words into the wrong one.

Why mapping back is not just arithmetic: Whisper decodes a packed window as one recording. When
it does not close a segment at the silence between two regions (a sentence goes on across a
diarization cut, or it reads two sentences as one), one timestamped segment
``<|t0|> words <|t1|>`` holds words of both regions. The timestamp tokens are the only clock in
the greedy output: within a segment no token says where the boundary falls, so the words
cannot be split there. Splitting the text in proportion to time guesses, and a wrong guess
puts words in the wrong subtitle and dub slot just as silently as giving the whole segment to
one region (what this code did: 2 of 10 real clips came back empty while their neighbours
carried two sentences). Hence three measures:

1. Regions are packed ``PACK_GAP_S`` (1 s) apart. Whisper nearly always ends a segment at a
   pause that long, so merges get rare; the cost is few windows (5 s regions still go 5 to a
   window). A gap cannot prevent a merge when the text runs on, so it is not relied on.
2. ``unpack_window`` gives each segment to the region it overlaps most, times clamped into
   that region, unless the segment is *ambiguous*: it overlaps two regions by at least
   ``CROSS_TOLERANCE_S`` each (or half of a shorter region), or it reaches into a region that
   got no segment of its own. The regions an ambiguous segment touches are returned in
   ``redo`` and get none of the window's segments.
3. The client (``AsrClient.transcribe_packed``) decodes every ``redo`` region alone, in a
   window of its own, and so too an audible region that came back empty; when such a region
   has words alone, the regions beside it in its window are decoded alone as well, because
   its words were most likely read into theirs (with timestamps that do not overlap it).

So every region's transcript comes wholly from one decode, the packed one where it was
unambiguous and its own window otherwise, never from a mix: the mapping neither loses nor
duplicates a word. The extra windows are spent only where packing went wrong, all at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polydub.orchestrator.inference.asr import TranscriptSegment

WINDOW_S = 30.0
PACK_GAP_S = 1.0
# Whisper's timestamps sit within a few tenths of a second of the speech they bound; a
# segment reaching less than this into a region that has segments of its own is that slack.
CROSS_TOLERANCE_S = 0.25
TOUCH_S = 0.02  # one timestamp step: any less is rounding, not a reach into a region


@dataclass(frozen=True)
class PackedRegion:
    """Where a region sits in a packed window."""

    region: int  # index into the regions given
    window: int
    offset: float  # seconds from the window start
    duration: float

    @property
    def end(self) -> float:
        return self.offset + self.duration


@dataclass(frozen=True)
class Unpacked:
    """One packed window's segments on the clocks of its regions."""

    segments: dict[int, list[TranscriptSegment]]  # region index -> its segments, in order
    redo: frozenset[int]  # regions to decode alone (no segments above): a segment spans them


def pack_regions(
    durations: Sequence[float], window_s: float = WINDOW_S, gap_s: float = PACK_GAP_S
) -> list[list[PackedRegion]]:
    """Greedy, in order: regions go back-to-back (``gap_s`` of silence between) into windows
    of at most ``window_s``. Every duration must be <= ``window_s``."""
    windows: list[list[PackedRegion]] = []
    used = math.inf
    for index, duration in enumerate(durations):
        if duration > window_s:
            raise ValueError(f"region {index} is longer than a window: {duration:.2f}s")
        offset = used + gap_s
        if not windows or offset + duration > window_s:
            windows.append([])
            offset = 0.0
        windows[-1].append(PackedRegion(index, len(windows) - 1, offset, duration))
        used = offset + duration
    return windows


def _overlap(segment: TranscriptSegment, placement: PackedRegion) -> float:
    return max(0.0, min(segment.end, placement.end) - max(segment.start, placement.offset))


def _distance(segment: TranscriptSegment, placement: PackedRegion) -> float:
    return max(placement.offset - segment.end, segment.start - placement.end, 0.0)


def _owner(segment: TranscriptSegment, ordered: Sequence[PackedRegion]) -> PackedRegion:
    """The region overlapping the segment most; for one in a gap, the nearest (earlier on ties)."""
    best = max(ordered, key=lambda p: _overlap(segment, p))
    if _overlap(segment, best) > 0.0:
        return best
    return min(ordered, key=lambda p: _distance(segment, p))


def unpack_window(
    segments: Sequence[TranscriptSegment],
    placements: Sequence[PackedRegion],
    tolerance_s: float = CROSS_TOLERANCE_S,
) -> Unpacked:
    """Window-relative segments -> region-relative ones, and the regions to decode alone.

    A segment goes to the region it overlaps most (in a gap: the nearest), its times clamped
    into it. It is ambiguous, and every region it touches goes to ``redo``, when it overlaps
    two regions by >= ``min(tolerance_s, half the region)`` each, or reaches into a region
    that owns no segment.
    """
    ordered = sorted(placements, key=lambda p: p.offset)
    owners = [_owner(seg, ordered) for seg in segments] if ordered else []
    owned = {p.region: 0 for p in ordered}
    for owner in owners:
        owned[owner.region] += 1

    redo: set[int] = set()
    ambiguous: list[bool] = []
    for seg, owner in zip(segments, owners, strict=True):
        touched = [p for p in ordered if p is owner or _overlap(seg, p) > TOUCH_S]
        spanned = [p for p in touched if _overlap(seg, p) >= min(tolerance_s, 0.5 * p.duration)]
        reaches_empty = any(owned[p.region] == 0 for p in touched if p is not owner)
        ambiguous.append(len(spanned) >= 2 or reaches_empty)
        if ambiguous[-1]:
            redo.update(p.region for p in touched)

    out: dict[int, list[TranscriptSegment]] = {p.region: [] for p in ordered}
    for seg, owner, unclear in zip(segments, owners, ambiguous, strict=True):
        if unclear or owner.region in redo:
            continue
        start = min(max(seg.start - owner.offset, 0.0), owner.duration)
        end = min(max(seg.end - owner.offset, start), owner.duration)
        out[owner.region].append(dataclasses.replace(seg, start=start, end=end))
    for region_segments in out.values():
        region_segments.sort(key=lambda s: (s.start, s.end))
    return Unpacked(out, frozenset(redo))


def unpack_segments(
    segments: Sequence[TranscriptSegment], placements: Sequence[PackedRegion]
) -> dict[int, list[TranscriptSegment]]:
    """``unpack_window(...).segments``: regions it would decode alone come back empty."""
    return unpack_window(segments, placements).segments


def neighbours(placements: Sequence[PackedRegion], region: int) -> list[int]:
    """The regions packed right before and right after ``region`` in its window."""
    ordered = sorted(placements, key=lambda p: p.offset)
    index = next(k for k, p in enumerate(ordered) if p.region == region)
    return [ordered[k].region for k in (index - 1, index + 1) if 0 <= k < len(ordered)]
