"""NLLB-200 translation: tokenisation with language codes, encoding, and the beam search
(``nllb_search``) over whatever runs the two exported graphs (``NllbModel``): onnxruntime
sessions of this process (``nllb_ort.OrtNllb``) in the ``nllb`` Triton model, the exporter's and
the tests' checks and the benchmark. Needs ``tokenizers`` besides numpy.

Source ids are [src_lang_code] + pieces + [</s>], as in the NLLB checkpoints.

On CPUs a batch runs as several beam searches at once, each over a share of the sentences, in
threads that share the graphs' sessions (single-threaded runs): while one search reorders its
cache in numpy, another's decoder step runs. At NLLB-600M's shape on 2 cores, 16 sentences x 4
beams went from 47 to 60 tokens/s against one search over the batch on 2 intra-op threads
(issue 17).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polydub.serving.nllb_ort import OrtNllb
from polydub.serving.nllb_search import (
    FloatArray,
    GenerationConfig,
    Hypothesis,
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
    """The two exported graphs, however they are run (onnxruntime sessions, on any provider).
    ``shares_cross``: the decoder takes a source's cross K/V once for all its beams."""

    shares_cross: bool

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

    def sibling(self) -> NllbModel:
        """The same graphs with a cache of its own, for a search in another thread."""
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


Cancelled = Callable[[Sequence[int]], Set[int]]


class Translator:
    """``searches``: beam searches run at once over a batch's sentences (threads over
    ``model.sibling()``s); 1: the whole batch in one search, as on a GPU."""

    def __init__(
        self,
        codec: NllbCodec,
        model: NllbModel,
        config: GenerationConfig,
        limits: TranslationLimits = TranslationLimits(),
        searches: int = 1,
    ) -> None:
        if searches < 1:
            raise ValueError(f"searches must be >= 1, got {searches}")
        self.codec = codec
        self.models = [model, *(model.sibling() for _ in range(searches - 1))]
        self.config = config
        self.limits = limits
        self._pool = ThreadPoolExecutor(searches - 1, "nllb-search") if searches > 1 else None
        self._asking = threading.Lock()

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
        self, items: Sequence[TranslationItem], cancelled: Cancelled | None = None
    ) -> list[list[Candidate]]:
        """Candidates per item; ``cancelled(running)``, asked between decode steps: the
        running items it answers are dropped from the batch and get no candidates (their caller
        went away)."""
        if not items:
            return []
        for item in items:
            self.check(item)
        # The encoder's position table bounds the source length too.
        max_tokens = min(self.limits.max_source_tokens, self.config.max_position_embeddings)
        sources = [self.codec.encode(item.text, item.src_lang, max_tokens) for item in items]
        requests = [
            SearchRequest(
                forced_bos_token_id=self.codec.language_id(item.tgt_lang),
                num_beams=item.num_beams,
                max_length=self.max_length(item, len(src)),
            )
            for item, src in zip(items, sources, strict=True)
        ]
        shares = _shares([r.num_beams * r.max_length for r in requests], len(self.models))
        failed = threading.Event()  # one search failed: the batch fails, the others stop

        def search(model: NllbModel, share: list[int]) -> list[list[Hypothesis]]:
            try:
                return self._search(
                    model,
                    [sources[i] for i in share],
                    [requests[i] for i in share],
                    self._share_cancelled(share, cancelled, failed),
                )
            except BaseException:
                failed.set()
                raise

        # items < searches: fewer shares than models
        (own_model, own_share), *others = zip(self.models, shares, strict=False)
        pending = [self._pool.submit(search, *other) for other in others] if self._pool else []
        try:
            mine = search(own_model, own_share)
        finally:
            wait(pending)  # a failed batch ends with its searches: their caches are free again
        found = [mine, *(future.result() for future in pending)]
        hypotheses: list[list[Hypothesis]] = [[] for _ in items]
        for share, results in zip(shares, found, strict=True):
            for i, hyps in zip(share, results, strict=True):
                hypotheses[i] = hyps
        return [
            [
                Candidate(self.codec.decode(h.tokens), h.tokens, h.score, h.log_prob)
                for h in hyps[: item.num_return]
            ]
            for item, hyps in zip(items, hypotheses, strict=True)
        ]

    def _share_cancelled(
        self, share: Sequence[int], cancelled: Cancelled | None, failed: threading.Event
    ) -> Cancelled:
        """``cancelled`` in a share's own numbering, asked by one search at a time (the
        caller's answer may be stateful, and asks its clients through Triton); every running
        item once another search of the batch failed."""

        def asks(running: Sequence[int]) -> Set[int]:
            if failed.is_set():
                return set(running)
            if cancelled is None:
                return set()
            with self._asking:
                gone = cancelled([share[i] for i in running])
            return {i for i in running if share[i] in gone}

        return asks

    def _search(
        self,
        model: NllbModel,
        sources: Sequence[Sequence[int]],
        requests: Sequence[SearchRequest],
        cancelled: Cancelled,
    ) -> list[list[Hypothesis]]:
        """One encoder run and one beam search over some of a batch's sentences."""
        width = max(len(s) for s in sources)
        input_ids = np.full((len(sources), width), self.config.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(sources), width), dtype=np.int64)
        for row, ids in enumerate(sources):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        cross = model.encode(input_ids, attention_mask)
        fed: dict[bytes, tuple[IntArray, Past]] = {}

        def step(ids: IntArray, source_index: IntArray, past: Past | None) -> Any:
            key = source_index.tobytes()
            if key not in fed:  # rows change only when a request finishes
                fed.clear()
                index = cross_index(source_index, model.shares_cross)
                fed[key] = (
                    attention_mask[index],
                    tuple(np.ascontiguousarray(c[index]) for c in cross),
                )
            mask, step_cross = fed[key]
            if past is None:
                shape = (len(ids), self.config.decoder_heads, 0, self.config.head_dim)
                past = tuple(np.zeros(shape, np.float32) for _ in step_cross)
            return model.decode(ids, mask, step_cross, past)

        try:
            return beam_search(requests, step, self.config, cancelled, model.select)
        finally:
            model.release()


def cross_index(source_index: IntArray, shares_cross: bool) -> IntArray:
    """The sources whose encoder mask and cross K/V the decoder is fed, in order: one per source
    when the graph shares them among a source's rows (``shares_cross``) and the rows are equal
    runs, one run per source (each request's beams, as the search lays them out); else the
    source of each row."""
    if not shares_cross or not len(source_index):
        return source_index
    starts = np.flatnonzero(np.diff(source_index, prepend=source_index[0] - 1))
    sources = source_index[starts]
    runs = np.diff(starts, append=len(source_index))
    if np.all(runs == runs[0]) and len(np.unique(sources)) == len(sources):
        return sources
    return source_index


def _shares(costs: Sequence[int], count: int) -> list[list[int]]:
    """Item indices split into at most ``count`` non-empty shares of about equal cost (each
    item, costliest first, to the cheapest share so far), each in item order."""
    shares: list[list[int]] = [[] for _ in range(min(count, len(costs)))]
    loads = [0] * len(shares)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        cheapest = loads.index(min(loads))
        shares[cheapest].append(i)
        loads[cheapest] += costs[i]
    return [sorted(share) for share in shares]


# The exporter's checks, the tests and the benchmark run the graphs as the served model does.
OnnxRuntimeModel = OrtNllb
