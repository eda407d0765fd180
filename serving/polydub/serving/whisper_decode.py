"""Whisper's batched greedy decoding with a KV cache and timestamp rules, in numpy.

Shared by the ``whisper`` Triton model (``whisper_service``) and the in-process checks of
``polydub.export.whisper``: the served loop and the reference loop are the same code. The loop
reaches the graphs through a ``DecoderBackend`` (``whisper_ort.OrtGraphs``: onnxruntime).

The logit rules follow openai/whisper and transformers' Whisper generation (suppress blank at the
start, suppress non-speech tokens, timestamp pairing/monotonicity, max initial timestamp, prefer
timestamps when their total probability beats every text token), so greedy tokens equal
``WhisperForConditionalGeneration.generate(..., return_timestamps=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from polydub.serving.whisper_features import Array
from polydub.serving.whisper_text import WhisperFacts

TASKS = ("transcribe", "translate", "detect")

# ----------------------------------------------------------------------------- logit rules

NEG_INF = np.float32(-np.inf)


def log_softmax(x: Array) -> Array:
    x = x.astype(np.float32, copy=False)
    peak = np.max(x, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0).astype(np.float32)
    shifted = x - peak
    with np.errstate(divide="ignore"):
        result = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return np.asarray(result, dtype=np.float32)


def apply_logit_rules(
    logits: Array,
    generated: Sequence[Sequence[int]],
    facts: WhisperFacts,
    first: bool,
    no_eot: Array | None = None,
) -> Array:
    """Mask the logits [b, vocab] of the next sampled token of each row (a copy, float32).

    ``generated``: each row's sampled tokens so far (after the prompt). ``no_eot``: rows [b]
    bool that may not end yet (``min_new_tokens``). Order as in transformers: min-new-tokens,
    begin-suppress, suppress, then the timestamp rules.
    """
    scores = np.array(logits, dtype=np.float32, copy=True)
    tb = facts.timestamp_begin
    if no_eot is not None:
        scores[no_eot, facts.eot] = NEG_INF
    if first and facts.begin_suppress_tokens:
        scores[:, list(facts.begin_suppress_tokens)] = NEG_INF
    if facts.suppress_tokens:
        scores[:, list(facts.suppress_tokens)] = NEG_INF
    scores[:, facts.no_timestamps] = NEG_INF
    for row, seq in enumerate(generated):
        last_ts = len(seq) >= 1 and seq[-1] >= tb
        penultimate_ts = len(seq) < 2 or seq[-2] >= tb
        if last_ts:
            if penultimate_ts:
                scores[row, tb:] = NEG_INF  # a pair just closed: text (or eot) next
            else:
                scores[row, : facts.eot] = NEG_INF  # an opened pair: timestamp or eot next
        stamps = [t for t in seq if t >= tb]
        if stamps:
            # Timestamps never decrease; a closing one may repeat the last, else strictly later.
            last = stamps[-1] if (last_ts and not penultimate_ts) else stamps[-1] + 1
            scores[row, tb:last] = NEG_INF
    if first:
        scores[:, :tb] = NEG_INF  # the first sampled token is a timestamp
        if facts.max_initial_timestamp_index is not None:
            scores[:, tb + facts.max_initial_timestamp_index + 1 :] = NEG_INF
    logprobs = log_softmax(scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        ts_peak = np.max(logprobs[:, tb:], axis=-1, keepdims=True)
        ts_peak = np.where(np.isfinite(ts_peak), ts_peak, 0.0)
        ts_logprob = ts_peak[:, 0] + np.log(np.sum(np.exp(logprobs[:, tb:] - ts_peak), axis=-1))
    text_max = np.max(logprobs[:, :tb], axis=-1)
    prefer_ts = ts_logprob > text_max
    scores[prefer_ts, :tb] = NEG_INF
    return scores


# ---------------------------------------------------------------------------- the decoding


class DecoderBackend(Protocol):
    """How the loop reaches the two graphs (``OrtGraphs``: onnxruntime in this process).

    States (cross-attention tensors, past key/values) are opaque to the loop.
    """

    def encode(self, features: Array) -> Any: ...

    def step(self, input_ids: Array, past: Any | None, cross: Any) -> tuple[Array, Any]:
        """Logits [b, vocab] of the last position and the present key/values."""
        ...

    def select(self, state: Any, rows: Array) -> Any:
        """Keep only ``rows`` (batch indices) of a state."""
        ...


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None = None  # Whisper code; None: detect
    task: str = "transcribe"  # transcribe | translate | detect (language only)


@dataclass
class DecodeResult:
    language: str
    language_probability: float
    no_speech_prob: float
    tokens: list[int] = field(default_factory=list)  # sampled tokens, eot excluded
    logprobs: list[float] = field(default_factory=list)  # one per token in ``tokens``
    sum_logprob: float = 0.0  # includes the eot's when one was sampled

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


def validate_options(options: DecodeOptions, facts: WhisperFacts) -> None:
    if options.task not in TASKS:
        raise ValueError(f"unknown task {options.task!r}; expected one of {', '.join(TASKS)}")
    if options.language is not None and options.language not in facts.languages:
        supported = ", ".join(sorted(facts.languages))
        raise ValueError(f"unsupported language {options.language!r}; supported: {supported}")


def _softmax_row(x: Array) -> Array:
    x = x.astype(np.float64) - np.max(x)
    e = np.exp(x)
    return np.asarray(e / e.sum())


def greedy_decode(
    backend: DecoderBackend,
    features: Array,
    options: Sequence[DecodeOptions],
    facts: WhisperFacts,
    max_new_tokens: int | Sequence[int],
    compact_below: float = 0.5,
    min_new_tokens: int | Sequence[int] = 0,
) -> list[DecodeResult]:
    """Batched greedy decoding with a KV cache for B windows ([B, n_mels, 3000] features).

    Step 1 feeds <|startoftranscript|> alone: its logits give the language (softmax over the
    language tokens) and the no-speech probability. Step 2 feeds <|lang|><|task|>; then one
    token per step, until eot or the row's ``max_new_tokens`` (one bound for all rows, or one per
    row). ``min_new_tokens`` (one for all rows, or one per row): eot is suppressed until a row
    has that many tokens, as transformers' ``min_new_tokens`` (benchmarks force equal work with
    it; random weights rarely end on their own anyway). Rows that finish stay in the batch (fed eot, outputs ignored) until fewer
    than ``compact_below`` of the rows are live, then the states are compacted: cheap steps
    without copying the large cross-attention tensors every time a single row ends.
    """
    batch = len(options)
    if batch == 0:
        return []
    for opt in options:
        validate_options(opt, facts)
    room = facts.max_target_positions - facts.prompt_length
    bounds = [max_new_tokens] * batch if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(bounds) != batch:
        raise ValueError(f"{len(bounds)} max_new_tokens bounds for {batch} rows")
    limits = [max(0, min(int(b), room)) for b in bounds]
    mins = [min_new_tokens] * batch if isinstance(min_new_tokens, int) else list(min_new_tokens)
    if len(mins) != batch:
        raise ValueError(f"{len(mins)} min_new_tokens bounds for {batch} rows")

    cross = backend.encode(features)
    logits, past = backend.step(np.full((batch, 1), facts.sot, dtype=np.int64), None, cross)
    logits = np.asarray(logits, dtype=np.float32)

    codes = list(facts.languages)
    lang_ids = np.array([facts.languages[c] for c in codes], dtype=np.int64)
    results: list[DecodeResult] = []
    for row, opt in enumerate(options):
        lang_probs = _softmax_row(logits[row, lang_ids])
        if opt.language is None:
            best = int(np.argmax(lang_probs))
            language, probability = codes[best], float(lang_probs[best])
        else:
            language = opt.language
            probability = float(lang_probs[codes.index(language)])
        no_speech = float(_softmax_row(logits[row])[facts.no_speech])
        results.append(DecodeResult(language, probability, no_speech))

    live = [row for row, opt in enumerate(options) if opt.task != "detect" and limits[row] > 0]
    if not live:
        return results
    if len(live) < batch:
        rows = np.array(live, dtype=np.int64)
        past, cross = backend.select(past, rows), backend.select(cross, rows)
    prompt = np.array(
        [[facts.languages[results[r].language], facts.task_token(options[r].task)] for r in live],
        dtype=np.int64,
    )
    logits, past = backend.step(prompt, past, cross)

    order = list(live)  # batch row -> request index
    done = [False] * len(order)
    for step in range(max(limits[r] for r in live)):
        generated = [results[r].tokens for r in order]
        no_eot = np.array([len(results[r].tokens) < mins[r] for r in order])
        scores = apply_logit_rules(
            np.asarray(logits), generated, facts, first=step == 0, no_eot=no_eot
        )
        tokens = np.argmax(scores, axis=-1)
        logprobs = log_softmax(scores)
        for row, request in enumerate(order):
            if done[row]:
                continue
            token = int(tokens[row])
            logprob = float(logprobs[row, token])
            results[request].sum_logprob += logprob
            if token == facts.eot:
                done[row] = True
            else:
                results[request].tokens.append(token)
                results[request].logprobs.append(logprob)
                done[row] = len(results[request].tokens) >= limits[request]
        live_rows = [row for row in range(len(order)) if not done[row]]
        if not live_rows:
            break
        if len(live_rows) < compact_below * len(order):
            keep = np.array(live_rows, dtype=np.int64)
            past, cross = backend.select(past, keep), backend.select(cross, keep)
            order = [order[row] for row in live_rows]
            done = [False] * len(order)
            tokens = tokens[keep]
        next_ids = np.where(np.array(done), facts.eot, tokens).astype(np.int64)[:, None]
        logits, past = backend.step(next_ids, past, cross)
    return results
