"""The ``nllb`` Triton model's work: one request is one segment's whole translation, n-best out.

Inputs (``names.NllbIn``, per request row): text, src_lang, tgt_lang (FLORES-200 codes, BYTES),
optional n_best and max_length (INT32; max_length 0 or absent: from the source length).
Outputs (``names.NllbOut``): translations [n] and scores [n] (length-normalised
log-probabilities, best first) and token_ids [n, T] (the decoded sequences as ``generate``
returns them, padded with <pad>).

Every request of one dynamic batch is tokenised, encoded by ONE ``nllb_encoder`` call, and decoded
by ONE ``nllb_decoder`` call per step for all beams of all requests (requests may differ in target
language, beam count and length; finished ones leave the batch): ``nllb_translate.Translator``.
The graphs are reached through ``infer``, one Triton BLS call, which the model.py provides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.serving.batch import Failure, Inputs, MissingExport, Outcome, strings
from polydub.serving.names import (
    NLLB_DECODER,
    NLLB_ENCODER,
    NllbEncoderIn,
    NllbEncoderOut,
    NllbIn,
    NllbOut,
)
from polydub.serving.nllb_search import GENERATION_FILE, FloatArray, GenerationConfig, IntArray
from polydub.serving.nllb_translate import (
    STEP_OUTPUTS,
    NllbCodec,
    TranslationItem,
    TranslationLimits,
    Translator,
)

# One BLS call: (model, input arrays by name, output names) -> the outputs, in that order.
Infer = Callable[[str, Mapping[str, NDArray[Any]], Sequence[str]], list[NDArray[Any]]]

# config.pbtxt parameters and their defaults. num_beams: the beams of a request asking fewer
# n-best; the limits: nllb_translate.TranslationLimits; the graphs' models and their
# max_batch_size (a call with more rows is split).
TOKENIZER_DIR = "tokenizer"  # in the version folder: tokenizer.json and generation.json
PARAMETERS = {
    "tokenizer_dir": TOKENIZER_DIR,
    "num_beams": "4",
    "max_source_tokens": "512",
    "max_length_cap": "256",
    "max_len_a": "2.0",
    "max_len_b": "16",
    "encoder_model": NLLB_ENCODER,
    "decoder_model": NLLB_DECODER,
    "encoder_max_batch_size": "32",
    "decoder_max_batch_size": "256",
}


class ChunkedGraphs:
    """The two graphs as ``infer`` calls, split into chunks no larger than their max batch."""

    def __init__(
        self, infer: Infer, encoder: str, decoder: str, encoder_rows: int, decoder_rows: int
    ) -> None:
        self.infer = infer
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_rows = encoder_rows
        self.decoder_rows = decoder_rows

    def _chunked(
        self,
        model: str,
        feeds: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        max_rows: int,
    ) -> list[NDArray[Any]]:
        rows = len(next(iter(feeds.values())))
        parts = [
            self.infer(
                model,
                {n: np.ascontiguousarray(v[start : start + max_rows]) for n, v in feeds.items()},
                outputs,
            )
            for start in range(0, rows, max_rows)
        ]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(chunks, axis=0) for chunks in zip(*parts, strict=True)]

    def encode(
        self, input_ids: IntArray, attention_mask: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        key, value = self._chunked(
            self.encoder,
            {NllbEncoderIn.INPUT_IDS: input_ids, NllbEncoderIn.ATTENTION_MASK: attention_mask},
            [NllbEncoderOut.CROSS_KEY, NllbEncoderOut.CROSS_VALUE],
            self.encoder_rows,
        )
        return key, value

    def decode(self, feeds: dict[str, Any]) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
        top_log_probs, top_ids, key, value = self._chunked(
            self.decoder, feeds, list(STEP_OUTPUTS), self.decoder_rows
        )
        return top_log_probs, top_ids, key, value


class NllbService:
    """The tokenizer, the search limits and the graphs of one exported checkpoint."""

    def __init__(self, version_dir: Path, params: Mapping[str, str], infer: Infer) -> None:
        tokenizer_dir = version_dir / params["tokenizer_dir"]
        if not (tokenizer_dir / GENERATION_FILE).is_file():
            raise MissingExport(tokenizer_dir / GENERATION_FILE, "nllb")
        generation = GenerationConfig.load(tokenizer_dir)
        self.default_beams = min(int(params["num_beams"]), generation.max_beams)
        limits = TranslationLimits(
            max_source_tokens=int(params["max_source_tokens"]),
            max_length_cap=int(params["max_length_cap"]),
            max_len_a=float(params["max_len_a"]),
            max_len_b=int(params["max_len_b"]),
        )
        graphs = ChunkedGraphs(
            infer,
            encoder=params["encoder_model"],
            decoder=params["decoder_model"],
            encoder_rows=int(params["encoder_max_batch_size"]),
            decoder_rows=int(params["decoder_max_batch_size"]),
        )
        self.translator = Translator(NllbCodec(tokenizer_dir), graphs, generation, limits)
        self.pad_id = generation.pad_token_id

    def run(self, requests: Sequence[Inputs]) -> list[Outcome]:
        """Translate every row of every request as one batch; one outcome per request."""
        outcomes: list[Outcome] = [Failure("not translated")] * len(requests)
        items: list[TranslationItem] = []
        owners: list[tuple[int, int]] = []  # (request index, rows)
        for i, request in enumerate(requests):
            try:
                rows = self._items(request)
            except Exception as exc:
                outcomes[i] = Failure(f"nllb: {exc}", invalid=True)
                continue
            owners.append((i, len(rows)))
            items.extend(rows)
        if not items:
            return outcomes
        try:
            results = self.translator.translate(items)
        except Exception as exc:  # a failed batch fails its requests, never the model
            for i, _ in owners:
                outcomes[i] = Failure(f"nllb: {type(exc).__name__}: {exc}")
            return outcomes

        offset = 0
        for i, count in owners:
            mine = results[offset : offset + count]
            offset += count
            n = max(len(c) for c in mine)
            width = max(len(cand.tokens) for c in mine for cand in c)
            texts = np.full((count, n), b"", dtype=np.object_)
            scores = np.full((count, n), -np.inf, dtype=np.float32)
            tokens = np.full((count, n, width), self.pad_id, dtype=np.int64)
            for r, candidates in enumerate(mine):
                for j, cand in enumerate(candidates):
                    texts[r, j] = cand.text.encode("utf-8")
                    scores[r, j] = cand.score
                    tokens[r, j, : len(cand.tokens)] = cand.tokens
            outcomes[i] = {
                NllbOut.TRANSLATIONS: texts,
                NllbOut.SCORES: scores,
                NllbOut.TOKEN_IDS: tokens,
            }
        return outcomes

    def _items(self, request: Inputs) -> list[TranslationItem]:
        texts = strings(request[NllbIn.TEXT])
        sources = strings(request[NllbIn.SRC_LANG])
        targets = strings(request[NllbIn.TGT_LANG])
        if not len(texts) == len(sources) == len(targets):
            raise ValueError("text, src_lang and tgt_lang need one value per row")
        n_best = _ints(request, NllbIn.N_BEST, len(texts), 1)
        max_length = _ints(request, NllbIn.MAX_LENGTH, len(texts), 0)
        items = []
        for text, src, tgt, n, length in zip(
            texts, sources, targets, n_best, max_length, strict=True
        ):
            if n < 1:
                raise ValueError(f"n_best must be >= 1, got {n}")
            if length < 0:
                raise ValueError(f"max_length must be >= 0, got {length}")
            item = TranslationItem(text, src, tgt, max(n, self.default_beams), n, length)
            self.translator.check(item)  # unknown language, too many beams: this request only
            items.append(item)
        return items


def _ints(request: Inputs, name: str, rows: int, default: int) -> list[int]:
    tensor = request.get(name)
    if tensor is None:
        return [default] * rows
    values = [int(v) for v in tensor.reshape(-1)]
    if len(values) != rows:
        raise ValueError(f"'{name}' has {len(values)} values for {rows} texts")
    return values
