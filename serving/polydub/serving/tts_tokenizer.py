"""Text normalisation and tokenisation for MMS-TTS (VITS character vocabularies).

The Triton models take token ids; turning text into ids happens in the orchestrator, from a
``TtsTokenizer`` spec that the exporter writes beside each model (``tokenizers/<iso3>.json`` in
the ``mms_tts_tokenizer`` model's version folder) and Triton serves (``SpecFolder``). It mirrors
transformers' ``VitsTokenizer`` (lowercase what the vocabulary lacks, keep only vocabulary
characters, interleave the blank id 0 when ``add_blank``) and adds what dubbing input needs:
Unicode NFC (translations may come decomposed), every kind of whitespace as one space, and runs
of spaces collapsed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self

from polydub.serving.files import CachedFile

BLANK_ID = 0  # VitsTokenizer interleaves the token with id 0 between characters
_SPACES = re.compile(r"\s+")
_NON_ASCII = re.compile(r"[^\x00-\x7F]")
# Typographic variants that a vocabulary usually holds in their plain form.
_EQUIVALENTS = {"’": "'", "‘": "'", "ʼ": "'", "–": "-", "—": "-", "‐": "-"}


class RomanizerMissing(ImportError):
    """The voice expects romanised text and ``uroman`` is not installed."""

    def __init__(self, language: str) -> None:
        super().__init__(
            f"the MMS-TTS model for {language!r} expects romanised text: install 'uroman' in "
            "the orchestrator's environment"
        )


@dataclass(frozen=True)
class TtsTokenizer:
    """Everything the client needs to turn text into one MMS-TTS model's input ids."""

    language: str  # ISO 639-3
    vocab: dict[str, int]
    add_blank: bool = True
    normalize: bool = True
    is_uroman: bool = False  # romanise non-Latin text first (the checkpoint was trained so)
    sampling_rate: int = 16_000
    hop_length: int = 256  # waveform samples per predicted frame
    model: str = ""  # Triton model name
    checkpoint: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    # ------------------------------------------------------------------ text -> ids

    @cached_property
    def _unicode_form(self) -> Literal["NFC", "NFD"]:
        # Composed characters unless the vocabulary spells accents as combining marks.
        return "NFD" if any(unicodedata.combining(c) for c in self.vocab) else "NFC"

    @cached_property
    def _equivalents(self) -> dict[int, str]:
        return {
            ord(src): dst
            for src, dst in _EQUIVALENTS.items()
            if src not in self.vocab and dst in self.vocab
        }

    def normalize_text(self, text: str) -> str:
        """The text the model will speak: only vocabulary characters, single spaces."""
        text = unicodedata.normalize(self._unicode_form, text)
        text = _SPACES.sub(" ", text).translate(self._equivalents)
        if self.normalize:
            # As VitsTokenizer.normalize_text: a character the vocabulary holds as-is is kept
            # (some vocabularies have upper-case letters), any other is lower-cased.
            text = "".join(c if c in self.vocab else c.lower() for c in text)
        if self.language == "ron":
            text = text.replace("ț", "ţ")  # VitsTokenizer._preprocess_char: the trained form
        if self.is_uroman and _NON_ASCII.search(text):
            text = self.romanize(text)
        text = "".join(self._in_vocab(c) for c in text)
        return _SPACES.sub(" ", text).strip()

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``; empty when nothing speakable is left."""
        ids = [self.vocab[c] for c in self.normalize_text(text)]
        if not ids or not self.add_blank:
            return ids
        interleaved = [BLANK_ID] * (2 * len(ids) + 1)
        interleaved[1::2] = ids
        return interleaved

    def romanize(self, text: str) -> str:
        """Latin letters for text in another script, with ``uroman`` (only checkpoints trained on
        romanised text need it, so it is not a dependency)."""
        try:
            import uroman
        except ImportError:
            raise RomanizerMissing(self.language) from None
        romanized: str = uroman.Uroman().romanize_string(text, lcode=self.language)
        return romanized

    def _in_vocab(self, char: str) -> str:
        """The character, else its accent-free base when the vocabulary has that (ö -> o),
        else nothing (punctuation, symbols and foreign letters are not spoken)."""
        if char in self.vocab:
            return char
        base = "".join(
            c for c in unicodedata.normalize("NFD", char) if not unicodedata.combining(c)
        )
        return base if base and base != char and all(c in self.vocab for c in base) else ""


# ------------------------------------------------------------------------ the served specs

SPEC_FOLDER = "tokenizers"  # in the mms_tts_tokenizer model's version folder
_CODE = re.compile(r"^[a-z]{3}$")  # ISO 639-3; also keeps paths inside the folder


def spec_path(folder: Path, language: str) -> Path:
    return folder / f"{language}.json"


class SpecFolder:
    """The exported voices' specs, as the ``mms_tts_tokenizer`` model serves them: a language's
    spec (JSON bytes), or for an empty code the list of languages with one. Each file is read
    again when it changes, so a newly exported voice is served without a reload; only this
    folder is read, which keeps it working from a cloud model repository too."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, CachedFile] = {}

    def respond(self, language: str) -> bytes:
        code = language.strip()
        return self.spec(code) if code else self.languages()

    def languages(self) -> bytes:
        names = [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []
        codes = sorted(n[:-5] for n in names if n.endswith(".json") and _CODE.match(n[:-5]))
        return json.dumps({"languages": codes}).encode("utf-8")

    def spec(self, code: str) -> bytes:
        if not _CODE.match(code):
            raise ValueError(f"not an ISO 639-3 code: {code!r}")
        cached = self._files.setdefault(code, CachedFile(spec_path(self.folder, code)))
        body = cached.read()
        if body is None:
            raise ValueError(f"no MMS-TTS tokenizer for language '{code}'")
        return body
