"""NLLB-200 translation: tokenisation with language codes and batched beam search over a KV cache.

Pure numpy (plus ``tokenizers``), no Triton and no polydub imports: the BLS model (``model.py``)
runs it with Triton calls as the model, and the exporter and the tests run the very same code with
in-process onnxruntime sessions, so "served tokens == in-process tokens" compares one algorithm.

Conventions, as in the NLLB checkpoints and Hugging Face ``generate``:
  source ids  = [src_lang_code] + pieces + [</s>]
  target ids  = [decoder_start (</s>), tgt_lang_code (forced, scored 0), ..., </s>]
  beam search = transformers' beam search (length_penalty, early_stopping=False heuristic,
                2 * num_beams candidates per step); num_beams=1 gives greedy decoding.
Scores are sum(log p) / generated_length ** length_penalty (generated_length counts every token
after the decoder start, the forced language code included).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
Past = tuple[FloatArray, FloatArray]
# (decoder input ids [rows, T], source row of each row [rows], past or None) ->
# (top log-probs [rows, K], their token ids [rows, K], present)
StepFn = Callable[[IntArray, IntArray, Past | None], tuple[FloatArray, IntArray, Past]]

GENERATION_FILE = "generation.json"  # written by the exporter next to tokenizer.json
_DEAD = np.float32(-1.0e9)  # a running beam that already ended (transformers uses the same value)


@dataclass(frozen=True)
class GenerationConfig:
    """What the search needs to know about the exported graphs and the checkpoint."""

    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    decoder_layers: int
    decoder_heads: int
    head_dim: int
    top_k: int  # candidates per row the decoder graph returns: beams <= top_k // 2
    max_position_embeddings: int
    length_penalty: float = 1.0
    forced_eos_token_id: int | None = None

    @property
    def max_beams(self) -> int:
        return self.top_k // 2

    def save(self, directory: Path) -> Path:
        path = Path(directory) / GENERATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path | str) -> GenerationConfig:
        return cls(**json.loads((Path(directory) / GENERATION_FILE).read_text()))


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


# ----------------------------------------------------------------------------- beam search


@dataclass(frozen=True)
class SearchRequest:
    forced_bos_token_id: int  # the target language code
    num_beams: int
    max_length: int  # of the whole target sequence, decoder start included (as in generate)


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # decoder start, language code, ..., </s> (unless cut by max_length)
    score: float  # length-normalised
    log_prob: float  # sum of the generated tokens' log-probabilities


@dataclass
class _Beams:
    """One request's running beams and finished hypotheses (transformers' semantics)."""

    request: SearchRequest
    tokens: IntArray  # [rows, cur_len]
    scores: FloatArray  # [rows] running sums of log-probs
    finished: list[Hypothesis] = field(default_factory=list)
    done: bool = False

    def advance(
        self, log_probs: FloatArray, ids: IntArray, config: GenerationConfig
    ) -> tuple[IntArray, IntArray]:
        """One step: returns (parent row of each new beam, its new token); may set ``done``."""
        k = self.request.num_beams
        cur_len = self.tokens.shape[1]
        last = cur_len + 1 >= self.request.max_length
        if last and config.forced_eos_token_id is not None:
            # ForcedEOSTokenLogitsProcessor: the last token is </s>, scored 0.
            log_probs = np.full_like(log_probs, -np.inf)
            log_probs[:, 0] = 0.0
            ids = np.full_like(ids, config.forced_eos_token_id)
        candidates = (self.scores[:, None] + log_probs).astype(np.float32)
        flat = candidates.ravel()
        order = np.argsort(-flat, kind="stable")[: 2 * k]
        rows = order // log_probs.shape[1]
        tokens = ids.ravel()[order].astype(np.int64)
        scores = flat[order]
        hits = (tokens == config.eos_token_id) | last

        # Only the top num_beams candidates may finish; the rest only keep k beams running.
        norm = np.float32(cur_len**config.length_penalty)  # generated length after this token
        for rank in range(min(k, len(order))):
            if hits[rank] and np.isfinite(scores[rank]):
                self.finished.append(
                    Hypothesis(
                        tokens=(*self.tokens[rows[rank]].tolist(), int(tokens[rank])),
                        score=float(scores[rank] / norm),
                        log_prob=float(scores[rank]),
                    )
                )
        self.finished.sort(key=lambda h: -h.score)
        del self.finished[k:]

        running = (scores + hits.astype(np.float32) * _DEAD).astype(np.float32)
        keep = np.argsort(-running, kind="stable")[:k]
        self.tokens = np.concatenate([self.tokens[rows[keep]], tokens[keep, None]], axis=1)
        self.scores = running[keep]

        if last:
            self.done = True
        elif len(self.finished) >= k:
            # early_stopping=False: stop when the best running beam, at the current length,
            # cannot beat the worst finished hypothesis.
            best_possible = self.scores[0] / np.float32(cur_len**config.length_penalty)
            self.done = bool(best_possible <= self.finished[-1].score)
        return rows[keep], tokens[keep]

    def result(self) -> list[Hypothesis]:
        if self.finished:
            return list(self.finished)
        # Only when every candidate was -inf (cannot happen with real log-probs).
        return [Hypothesis(tuple(self.tokens[0].tolist()), float("-inf"), float("-inf"))]


def beam_search(
    requests: Sequence[SearchRequest], step: StepFn, config: GenerationConfig
) -> list[list[Hypothesis]]:
    """Batched beam search: every request's beams share one decoder call per step.

    Requests may have different beam counts, target languages and max lengths; a request leaves
    the batch (its rows leave the KV cache) as soon as it is done, so the batch shrinks.
    """
    results: list[list[Hypothesis]] = [[] for _ in requests]
    start = config.decoder_start_token_id
    states: list[tuple[int, _Beams]] = []
    for i, request in enumerate(requests):
        if request.num_beams < 1 or request.num_beams > config.max_beams:
            raise ValueError(f"num_beams must be 1..{config.max_beams}, got {request.num_beams}")
        tokens = np.array([[start, request.forced_bos_token_id]], dtype=np.int64)
        beams = _Beams(request, tokens, np.zeros(1, dtype=np.float32))
        if request.max_length <= 2:  # nothing to generate beyond the forced language code
            results[i] = [Hypothesis(tuple(tokens[0].tolist()), 0.0, 0.0)]
        else:
            states.append((i, beams))
    if not states:
        return results

    # First call: decoder start and the forced language code in one go (one row per request).
    input_ids = np.concatenate([b.tokens for _, b in states], axis=0)
    source_index = np.array([i for i, _ in states], dtype=np.int64)
    past: Past | None = None
    while states:
        top_log_probs, top_ids, present = step(input_ids, source_index, past)
        parents: list[IntArray] = []
        next_tokens: list[IntArray] = []
        sources: list[IntArray] = []
        still: list[tuple[int, _Beams]] = []
        offset = 0
        for i, beams in states:
            n = beams.tokens.shape[0]
            rows, tokens = beams.advance(
                top_log_probs[offset : offset + n], top_ids[offset : offset + n], config
            )
            if beams.done:
                results[i] = beams.result()
            else:
                parents.append(rows + offset)
                next_tokens.append(tokens)
                sources.append(np.full(len(rows), i, dtype=np.int64))
                still.append((i, beams))
            offset += n
        states = still
        if states:
            index = np.concatenate(parents)
            past = (present[0][index], present[1][index])
            input_ids = np.concatenate(next_tokens)[:, None]
            source_index = np.concatenate(sources)
    return results


# ----------------------------------------------------------------------------- translation


class NllbModel(Protocol):
    """The two exported graphs, however they are run (Triton BLS calls or onnxruntime)."""

    def encode(
        self, input_ids: IntArray, attention_mask: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        """-> cross_key, cross_value [batch, layers, heads, src_len, head_dim]"""
        ...

    def decode(self, feeds: dict[str, Any]) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
        """decoder feeds -> top_log_probs, top_ids, present_key, present_value"""
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
class Limits:
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
        limits: Limits = Limits(),
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

    def translate(self, items: Sequence[TranslationItem]) -> list[list[Candidate]]:
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
        cross_key, cross_value = self.model.encode(input_ids, attention_mask)

        requests = [
            SearchRequest(
                forced_bos_token_id=self.codec.language_id(item.tgt_lang),
                num_beams=item.num_beams,
                max_length=self.max_length(item, len(src)),
            )
            for item, src in zip(items, sources, strict=True)
        ]
        empty = np.zeros(
            (0, self.config.decoder_layers, self.config.decoder_heads, 0, self.config.head_dim),
            dtype=np.float32,
        )
        gathered: dict[str, Any] = {}

        def step(ids: IntArray, source_index: IntArray, past: Past | None) -> Any:
            key = source_index.tobytes()
            if gathered.get("key") != key:  # rows change only when a request finishes
                gathered.update(
                    key=key,
                    encoder_attention_mask=attention_mask[source_index],
                    cross_key=np.ascontiguousarray(cross_key[source_index]),
                    cross_value=np.ascontiguousarray(cross_value[source_index]),
                )
            if past is None:
                shape = (len(ids), *empty.shape[1:])
                past = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
            top_log_probs, top_ids, present_key, present_value = self.model.decode(
                {
                    "input_ids": ids,
                    "encoder_attention_mask": gathered["encoder_attention_mask"],
                    "cross_key": gathered["cross_key"],
                    "cross_value": gathered["cross_value"],
                    "past_key": past[0],
                    "past_value": past[1],
                }
            )
            return top_log_probs, top_ids, (present_key, present_value)

        hypotheses = beam_search(requests, step, self.config)
        return [
            [
                Candidate(self.codec.decode(h.tokens), h.tokens, h.score, h.log_prob)
                for h in hyps[: item.num_return]
            ]
            for item, hyps in zip(items, hypotheses, strict=True)
        ]


class OnnxRuntimeModel:
    """The exported graphs run in-process (export checks, tests, the benchmark)."""

    def __init__(self, encoder: Path | str, decoder: Path | str, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder), options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder), options, providers=providers)

    def encode(
        self, input_ids: IntArray, attention_mask: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        key, value = self.encoder.run(
            ["cross_key", "cross_value"], {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return key, value

    def decode(self, feeds: dict[str, Any]) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
        names = ["top_log_probs", "top_ids", "present_key", "present_value"]
        top_log_probs, top_ids, key, value = self.decoder.run(names, feeds)
        return top_log_probs, top_ids, key, value
