"""NLLB-200 beam search over a KV cache, batched across requests, in numpy.

Shared by the ``nllb`` Triton model (``nllb_service``, whose steps run the decoder graph in an
onnxruntime session of the instance) and the exporter's and the tests' checks, so "served
tokens == in-process tokens" compares one algorithm.

Conventions, as in the NLLB checkpoints and Hugging Face ``generate``:
  target ids  = [decoder_start (</s>), tgt_lang_code (forced, scored 0), ..., </s>]
  beam search = transformers' beam search (length_penalty, early_stopping=False heuristic,
                2 * num_beams candidates per step); num_beams=1 gives greedy decoding.
Scores are sum(log p) / generated_length ** length_penalty (generated_length counts every token
after the decoder start, the forced language code included).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
Past = tuple[FloatArray, ...]  # K/V per layer, in names.layer_tensors order
# (decoder input ids [rows, T], source row of each row [rows], past or None) ->
# (top log-probs [rows, K], their token ids [rows, K], this step's K/V per layer)
StepFn = Callable[[IntArray, IntArray, Past | None], tuple[FloatArray, IntArray, Past]]
# (past or None, this step's K/V, the row each new beam continues) -> the next step's past
SelectFn = Callable[[Past | None, Past, IntArray], Past]

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
    requests: Sequence[SearchRequest],
    step: StepFn,
    config: GenerationConfig,
    cancelled: Callable[[Sequence[int]], Set[int]] | None = None,
    select: SelectFn | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search: every request's beams share one decoder call per step.

    Requests may have different beam counts, target languages and max lengths; a request leaves
    the batch (its rows leave the KV cache) as soon as it is done, so the batch shrinks.
    ``cancelled(running)`` is asked once between steps with the running requests' indices and
    answers those whose caller went away: they leave the batch there, with no hypotheses, so
    they cost no more steps. (Once per step, not once per request: the caller maps requests to
    its own clients and asks each of those once.)
    ``select(past, new, rows)``: the next step's past, the rows each new beam continues of the
    past and of the step's new K/V, joined (default: ``extend_past``; the onnxruntime runner
    gathers into buffers it reuses).
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
        top_log_probs, top_ids, new = step(input_ids, source_index, past)
        parents: list[IntArray] = []
        next_tokens: list[IntArray] = []
        sources: list[IntArray] = []
        still: list[tuple[int, _Beams]] = []
        gone = cancelled([i for i, _ in states]) if cancelled is not None else frozenset()
        offset = 0
        for i, beams in states:
            n = beams.tokens.shape[0]
            if i in gone:
                offset += n  # its rows are not carried into the next step
                continue
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
            past = (select or extend_past)(past, new, index)
            input_ids = np.concatenate(next_tokens)[:, None]
            source_index = np.concatenate(sources)
    return results


def extend_past(past: Past | None, new: Past, rows: IntArray) -> Past:
    """The next step's past in plain numpy: ``past`` and ``new`` joined on the time axis, then
    the rows each new beam continues."""
    if past is None:
        return tuple(n[rows] for n in new)
    return tuple(np.concatenate([p, n], axis=2)[rows] for p, n in zip(past, new, strict=True))
