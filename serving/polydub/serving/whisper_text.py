"""What Whisper's tokens mean: the decoding facts of an exported checkpoint, token ids -> text,
and sampled tokens -> timed segments.

``tokenizer/whisper.json`` (``WhisperFacts``) and ``tokenizer/vocab.json`` are written by the
export (``polydub.export.whisper``) into the ``whisper`` model's version folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

FACTS_FILE = "whisper.json"
TIME_PRECISION = 0.02  # seconds per timestamp token


@dataclass(frozen=True)
class WhisperFacts:
    """What decoding needs to know about one exported checkpoint (``tokenizer/whisper.json``)."""

    checkpoint: str
    n_mels: int
    decoder_layers: int
    decoder_heads: int
    head_dim: int
    vocab_size: int
    max_target_positions: int
    eot: int
    sot: int
    translate: int
    transcribe: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict[str, int]  # Whisper language code -> token id (the ones detection considers)
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    max_initial_timestamp_index: int | None = 50
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperFacts:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # older exports had more keys
        data["suppress_tokens"] = tuple(data["suppress_tokens"])
        data["begin_suppress_tokens"] = tuple(data["begin_suppress_tokens"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> WhisperFacts:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def prompt_length(self) -> int:
        return 3  # <|startoftranscript|> <|xx|> <|transcribe|>; timestamps are on

    def task_token(self, task: str) -> int:
        return self.translate if task == "translate" else self.transcribe


# -------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable character table used by Whisper's byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


class Detokenizer:
    """Token ids -> text for Whisper's byte-level BPE; special and timestamp tokens are dropped."""

    def __init__(self, vocab: dict[str, int], eot: int) -> None:
        byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        self._bytes: dict[int, bytes] = {}
        for token, index in vocab.items():
            if index < eot:
                try:
                    self._bytes[index] = bytes(byte_of[c] for c in token)
                except KeyError:
                    continue  # not a byte-level token (never sampled as text)
        self.eot = eot

    @classmethod
    def load(cls, tokenizer_dir: str | Path, eot: int) -> Detokenizer:
        vocab = json.loads((Path(tokenizer_dir) / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab, eot)

    def decode(self, ids: Sequence[int]) -> str:
        data = b"".join(self._bytes.get(int(i), b"") for i in ids if 0 <= int(i) < self.eot)
        return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the window
    end: float
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": list(self.tokens),
            "avg_logprob": round(self.avg_logprob, 6),
        }


def build_segments(
    tokens: Sequence[int],
    logprobs: Sequence[float],
    facts: WhisperFacts,
    detok: Detokenizer,
    duration: float,
) -> list[Segment]:
    """Cut sampled tokens into timed segments: ``<|t0|> text <|t1|>`` pairs.

    Text before any timestamp starts at 0; text left open at the end (no closing timestamp, e.g.
    when max_new_tokens ran out) ends at ``duration``. Times are clamped to [0, duration].
    """
    tb = facts.timestamp_begin
    segments: list[Segment] = []
    start: float | None = None
    text: list[int] = []
    span: list[int] = []
    span_lp: list[float] = []
    last_time = 0.0

    def close(end: float) -> None:
        nonlocal start, text, span, span_lp
        words = detok.decode(text)
        if text and words.strip():
            begin = min(max(start if start is not None else 0.0, 0.0), duration)
            stop = min(max(end, begin), duration)
            mean = float(np.mean(span_lp)) if span_lp else 0.0
            segments.append(Segment(begin, stop, words, tuple(span), mean))
        start, text, span, span_lp = None, [], [], []

    for token, logprob in zip(tokens, logprobs, strict=True):
        if token >= tb:
            t = (token - tb) * TIME_PRECISION
            if text:
                span.append(token)
                span_lp.append(logprob)
                close(t)
            else:
                start, span, span_lp = t, [token], [logprob]
            last_time = t
        elif token < facts.eot:
            if start is None:
                start = last_time if segments else 0.0
            text.append(token)
            span.append(token)
            span_lp.append(logprob)
    close(duration)
    return segments
