"""NLLB-200 translation: tokenisation with language codes, encoding, and the beam search
(``nllb_search``) over whatever runs the two exported graphs (``NllbModel``): onnxruntime
sessions of this process (``nllb_ort.OrtNllb``) in the ``nllb`` Triton model, the exporter's and
the tests' checks and the benchmark. Needs ``tokenizers`` besides numpy.

Source ids are [src_lang_code] + pieces + [</s>], as in the NLLB checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polydub.serving.nllb_ort import OrtNllb
from polydub.serving.nllb_search import (
    FloatArray,
    GenerationConfig,
    IntArray,
    Past,
    SearchRequest,
    beam_search,
)

# ----------------------------------------------------------------------------- tokenisation


class UnknownLanguage(ValueError):
    pass


class NllbCodec:
    """tokenizer.json (Hugging Face ``tokenizers``) with NLLB's language-code conventions."""

    def __init__(self, tokenizer_dir: Path | str) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        self.eos_id = self._id("</s>")

    def _id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(token)
        return int(token_id)

    def language_id(self, code: str) -> int:
        """The id of a FLORES-200 code such as ``fra_Latn``; a clear error for anything else."""
        token_id = self.tokenizer.token_to_id(code) if _looks_like_flores(code) else None
        if token_id is None:
            raise UnknownLanguage(
                f"unknown language code {code!r}: expected a FLORES-200 code such as 'eng_Latn'"
            )
        return int(token_id)

    def encode(self, text: str, src_lang: str, max_tokens: int) -> list[int]:
        """[src_lang] + pieces + [</s>], pieces cut so the whole fits in max_tokens."""
        pieces = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.language_id(src_lang), *pieces[: max(0, max_tokens - 2)], self.eos_id]

    def decode(self, tokens: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        return text


def _looks_like_flores(code: str) -> bool:
    lang, _, script = code.partition("_")
    return len(lang) == 3 and len(script) == 4 and lang.isalpha() and script.isalpha()


# ----------------------------------------------------------------------------- translation


class NllbModel(Protocol):
    """The two exported graphs, however they are run (onnxruntime sessions, on any provider)."""

    def encode(self, input_ids: IntArray, attention_mask: IntArray) -> Past:
        """-> cross K/V per layer [batch, heads, src_len, head_dim] (layer_tensors order)"""
        ...

    def decode(
        self, input_ids: IntArray, encoder_attention_mask: IntArray, cross: Past, past: Past
    ) -> tuple[FloatArray, IntArray, Past]:
        """One step -> top_log_probs, top_ids, this step's K/V per layer"""
        ...

    def select(self, past: Past | None, new: Past, rows: IntArray) -> Past:
        """The next step's past: row ``rows[i]`` of ``past`` and of ``new``, joined on the
        time axis, for each new beam i."""
        ...

    def release(self) -> None:
        """A batch is done: buffers kept for it may go."""
        ...


@dataclass(frozen=True)
class TranslationItem:
    text: str
    src_lang: str  # FLORES-200
    tgt_lang: str
    num_beams: int
    num_return: int
    max_length: int = 0  # 0: from the source length (max_len_a * src + max_len_b), capped


@dataclass(frozen=True)
class Candidate:
    text: str
    tokens: tuple[int, ...]
    score: float
    log_prob: float


@dataclass(frozen=True)
class TranslationLimits:
    max_source_tokens: int = 512
    max_length_cap: int = 256
    max_len_a: float = 2.0
    max_len_b: int = 16


class Translator:
    def __init__(
        self,
        codec: NllbCodec,
        model: NllbModel,
        config: GenerationConfig,
        limits: TranslationLimits = TranslationLimits(),
    ) -> None:
        self.codec = codec
        self.model = model
        self.config = config
        self.limits = limits

    def check(self, item: TranslationItem) -> None:
        """Raise ValueError for what would fail the item (call before batching it)."""
        self.codec.language_id(item.src_lang)
        self.codec.language_id(item.tgt_lang)
        if not 1 <= item.num_return <= item.num_beams <= self.config.max_beams:
            raise ValueError(
                f"need 1 <= n_best <= num_beams <= {self.config.max_beams}, "
                f"got n_best={item.num_return} num_beams={item.num_beams}"
            )

    def max_length(self, item: TranslationItem, source_len: int) -> int:
        cap = min(self.limits.max_length_cap, self.config.max_position_embeddings)
        wanted = item.max_length or int(self.limits.max_len_a * source_len + self.limits.max_len_b)
        return max(3, min(cap, wanted))

    def translate(
        self,
        items: Sequence[TranslationItem],
        cancelled: Callable[[Sequence[int]], Set[int]] | None = None,
    ) -> list[list[Candidate]]:
        """Candidates per item; ``cancelled(running)``, asked once between decode steps: the
        running items it answers are dropped from the batch and get no candidates (their caller
        went away)."""
        for item in items:
            self.check(item)
        # The encoder's position table bounds the source length too.
        max_tokens = min(self.limits.max_source_tokens, self.config.max_position_embeddings)
        sources = [self.codec.encode(item.text, item.src_lang, max_tokens) for item in items]
        width = max(len(s) for s in sources)
        input_ids = np.full((len(items), width), self.config.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), width), dtype=np.int64)
        for row, ids in enumerate(sources):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        cross = self.model.encode(input_ids, attention_mask)

        requests = [
            SearchRequest(
                forced_bos_token_id=self.codec.language_id(item.tgt_lang),
                num_beams=item.num_beams,
                max_length=self.max_length(item, len(src)),
            )
            for item, src in zip(items, sources, strict=True)
        ]
        per_row: dict[bytes, tuple[IntArray, Past]] = {}

        def step(ids: IntArray, source_index: IntArray, past: Past | None) -> Any:
            key = source_index.tobytes()
            if key not in per_row:  # rows change only when a request finishes
                per_row.clear()
                per_row[key] = (
                    attention_mask[source_index],
                    tuple(np.ascontiguousarray(c[source_index]) for c in cross),
                )
            mask, row_cross = per_row[key]
            if past is None:
                shape = (len(ids), self.config.decoder_heads, 0, self.config.head_dim)
                past = tuple(np.zeros(shape, np.float32) for _ in row_cross)
            return self.model.decode(ids, mask, row_cross, past)

        try:
            hypotheses = beam_search(requests, step, self.config, cancelled, self.model.select)
        finally:
            self.model.release()
        return [
            [
                Candidate(self.codec.decode(h.tokens), h.tokens, h.score, h.log_prob)
                for h in hyps[: item.num_return]
            ]
            for item, hyps in zip(items, hypotheses, strict=True)
        ]


# The exporter's checks, the tests and the benchmark run the graphs as the served model does.
OnnxRuntimeModel = OrtNllb
