"""SRT and WebVTT subtitles from timed segments, readable by the usual rules, and their parsers.

Readability (``SubtitlePolicy``): at most ``max_chars`` (42) characters a line and ``max_lines`` (2)
lines a cue, at most ``max_duration`` (7 s) on screen, at least ``min_duration`` (0.8 s) where the
next cue leaves room. A segment too long for one cue is split at the sentence end nearest its
middle, else at a clause mark (, ; :), else between words (else between characters, for scripts
without spaces), recursively; each part's time is the segment's, shared in proportion to the
characters. Lines are broken where they come out most even.

Speakers: WebVTT carries them as voice spans (``<v Speaker>``); SRT has no standard for it, so
``to_srt(speaker_labels=True)`` prefixes the first line with ``(Speaker)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from polydub.orchestrator.records import Translated


class TextSpan(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class SubtitlePolicy:
    max_chars: int = 42
    max_lines: int = 2
    min_duration: float = 0.8
    max_duration: float = 7.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined with "\n"
    speaker: str | None = None

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    @property
    def duration(self) -> float:
        return self.end - self.start


_SENTENCE_END = ".!?…。！？؟।"
_CLAUSE = ",;:、，；：—–"
_WIDE_MARKS = "。！？、，；："  # end a phrase in scripts without spaces ("3.5" or "1,000" do not)
_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """One line of plain text: whitespace collapsed, control characters dropped."""
    text = "".join(ch if ch.isprintable() or ch.isspace() else " " for ch in text)
    return _WS.sub(" ", text).strip()


def make_cues(segments: Iterable[TextSpan], policy: SubtitlePolicy = SubtitlePolicy()) -> list[Cue]:
    """Readable cues from segments (each with ``start``, ``end``, ``text`` and optionally
    ``speaker``), sorted by start; a ``records.Transcribed`` gives the source-language cues."""
    return _cues(((s.start, s.end, s.text, getattr(s, "speaker", None)) for s in segments), policy)


def dub_cues(
    segments: Iterable[Translated], policy: SubtitlePolicy = SubtitlePolicy()
) -> list[Cue]:
    """Cues of what the dub says (each segment's translation) on the segments' own times."""
    return _cues(((s.start, s.end, s.translation, s.speaker) for s in segments), policy)


def _cues(
    texts: Iterable[tuple[float, float, str, str | None]], policy: SubtitlePolicy
) -> list[Cue]:
    """Cues of (start, end, text, speaker) tuples."""
    pieces: list[Cue] = []
    for seg_start, seg_end, raw, speaker in texts:
        text = clean_text(raw)
        if not text or seg_end <= seg_start:
            continue
        for start, end, part in _split(text, seg_start, seg_end, policy):
            lines = wrap(part, policy.max_chars, policy.max_lines) or [part]
            pieces.append(Cue(start, end, "\n".join(lines), speaker))
    pieces.sort(key=lambda c: (c.start, c.end))
    cues: list[Cue] = []
    for i, cue in enumerate(pieces):
        end = min(cue.end, cue.start + policy.max_duration)
        if end - cue.start < policy.min_duration:
            limit = pieces[i + 1].start if i + 1 < len(pieces) else math.inf
            end = max(end, min(cue.start + policy.min_duration, limit))
        cues.append(Cue(cue.start, end, cue.text, cue.speaker))
    return cues


def _split(
    text: str, start: float, end: float, policy: SubtitlePolicy
) -> list[tuple[float, float, str]]:
    readable = wrap(text, policy.max_chars, policy.max_lines) is not None
    if readable and end - start <= policy.max_duration:
        return [(start, end, text)]
    # Too long to read: any break will do. Only too long on screen: never cut inside a word.
    cut = _best_break(text, inside_words=not readable)
    if cut is None:
        return [(start, end, text)]
    left, right = text[:cut].rstrip(), text[cut:].lstrip()
    # Time is shared in proportion to the visible characters on each side.
    middle = start + (end - start) * len(left) / (len(left) + len(right))
    return _split(left, start, middle, policy) + _split(right, middle, end, policy)


def _best_break(text: str, *, inside_words: bool) -> int | None:
    """The cut position (start of the right part) nearest the middle, preferring sentence ends,
    then clause marks, then spaces, then (``inside_words``) any character."""
    middle = len(text) / 2
    best: tuple[float, int] | None = None
    for i in range(1, len(text)):
        prev, cur = text[i - 1], text[i]
        if cur == " " or prev == " ":
            if prev == " ":
                continue  # cut at the space itself, once
            penalty = 0.0 if prev in _SENTENCE_END else 0.15 if prev in _CLAUSE else 0.3
        elif prev in _WIDE_MARKS or (inside_words and (prev in _SENTENCE_END or prev in _CLAUSE)):
            penalty = 0.0 if prev in _SENTENCE_END else 0.15  # scripts without spaces
        elif inside_words:
            penalty = 0.6
        else:
            continue
        score = abs(i - middle) / len(text) + penalty
        if best is None or score < best[0]:
            best = (score, i)
    return best[1] if best else None


def wrap(text: str, max_chars: int, max_lines: int) -> list[str] | None:
    """Break ``text`` into at most ``max_lines`` lines of at most ``max_chars``, as even as
    possible, at spaces (or anywhere in a word longer than a line); None if it cannot fit."""
    if len(text) <= max_chars:
        return [text]
    if max_lines <= 1:
        return None
    best: tuple[int, list[str]] | None = None
    for cut in _line_breaks(text, max_chars):
        head, tail = text[:cut].rstrip(), text[cut:].lstrip()
        rest = wrap(tail, max_chars, max_lines - 1)
        if rest is None or not head:
            continue
        lines = [head, *rest]
        longest = max(len(line) for line in lines)
        if best is None or longest < best[0]:
            best = (longest, lines)
    return best[1] if best else None


def _line_breaks(text: str, max_chars: int) -> list[int]:
    spaces = [i for i, ch in enumerate(text[: max_chars + 1]) if ch == " "]
    return spaces or [max_chars]


def format_timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT with ``separator="."``)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def to_srt(cues: Iterable[Cue], *, speaker_labels: bool = False) -> str:
    blocks = []
    for n, cue in enumerate(cues, 1):
        text = cue.text.replace("-->", "->")
        if speaker_labels and cue.speaker:
            text = f"({cue.speaker}) {text}"
        times = f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}"
        blocks.append(f"{n}\n{times}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: Iterable[Cue]) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues:
        times = f"{format_timestamp(cue.start, '.')} --> {format_timestamp(cue.end, '.')}"
        text = _vtt_escape(cue.text)
        if cue.speaker:
            name = _vtt_escape(clean_text(cue.speaker))
            text = f"<v {name}>{text}</v>"
        blocks.append(f"{times}\n{text}\n")
    return "\n".join(blocks)


_TIMING = re.compile(
    r"^\s*(?P<a>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{3})\s*-->\s*(?P<b>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{3})"
)


def parse_timestamp(value: str) -> float:
    parts = value.replace(",", ".").split(":")
    seconds = float(parts[-1])
    minutes = int(parts[-2])
    hours = int(parts[-3]) if len(parts) == 3 else 0
    return round(hours * 3600 + minutes * 60 + seconds, 3)


def _blocks(text: str) -> list[list[str]]:
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return [b.split("\n") for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]


def parse_srt(text: str) -> list[Cue]:
    """Cues of an SRT file; raise ValueError for a block without a timing line."""
    cues = []
    for block in _blocks(text):
        index = next((i for i, line in enumerate(block[:2]) if _TIMING.match(line)), None)
        if index is None:
            raise ValueError(f"SRT block without timing: {block[0]!r}")
        m = _TIMING.match(block[index])
        assert m is not None
        lines = block[index + 1 :]
        cues.append(Cue(parse_timestamp(m["a"]), parse_timestamp(m["b"]), "\n".join(lines)))
    return cues


_VOICE = re.compile(r"^<v(?:\.[^ >]*)?\s+([^>]*)>")


def parse_vtt(text: str) -> list[Cue]:
    """Cues of a WebVTT file (voice spans become ``speaker``); raise ValueError without the
    ``WEBVTT`` header."""
    blocks = _blocks(text)
    if not blocks or not blocks[0][0].startswith("WEBVTT"):
        raise ValueError("missing WEBVTT header")
    cues = []
    for block in blocks[1:]:
        if block[0].startswith(("NOTE", "STYLE", "REGION")):
            continue
        index = next((i for i, line in enumerate(block[:2]) if _TIMING.match(line)), None)
        if index is None:
            raise ValueError(f"WebVTT block without timing: {block[0]!r}")
        m = _TIMING.match(block[index])
        assert m is not None
        body = "\n".join(block[index + 1 :])
        speaker = None
        voice = _VOICE.match(body)
        if voice:
            speaker = _vtt_unescape(voice.group(1).strip())
            body = body[voice.end() :]
        body = re.sub(r"</?[a-z][^>]*>", "", body)  # other spans: <i>, <b>, </v>, <c.x>
        cues.append(Cue(parse_timestamp(m["a"]), parse_timestamp(m["b"]), _vtt_unescape(body),
                        speaker))  # fmt: skip
    return cues


def _vtt_unescape(text: str) -> str:
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", "\u00a0")
            .replace("&amp;", "&"))  # fmt: skip
