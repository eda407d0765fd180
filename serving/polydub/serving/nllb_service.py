"""The ``nllb`` Triton model's work: one request is one segment's whole translation, n-best out.

Inputs (``names.NllbIn``, per request row): text, src_lang, tgt_lang (FLORES-200 codes, BYTES),
optional n_best and max_length (INT32; max_length 0 or absent: from the source length).
Outputs (``names.NllbOut``): translations [n] and scores [n] (length-normalised
log-probabilities, best first) and token_ids [n, T] (the decoded sequences as ``generate``
returns them, padded with <pad>).

Every request of one dynamic batch is tokenised, encoded and decoded with the beams of the other
requests (requests may differ in target language, beam count and length; finished ones leave
the batch): ``nllb_translate.Translator``. The batch's sentences are shared out among
``searches`` beam searches running at once (default: one per CPU; the GPU profile sets 1: one
encoder run and one decoder run per step for the whole batch). Both graphs run
in onnxruntime sessions of this model instance (``nllb_ort.OrtNllb``), so the cross-attention
K/V and the KV cache never leave the process. Between steps, a request whose client went away
(Triton's cancellation, asked through ``cancelled``) leaves the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from polydub.serving.batch import Failure, Inputs, MissingExport, Outcome, strings
from polydub.serving.names import NllbIn, NllbOut
from polydub.serving.nllb_ort import OrtNllb
from polydub.serving.nllb_search import GENERATION_FILE, GenerationConfig
from polydub.serving.nllb_translate import (
    NllbCodec,
    TranslationItem,
    TranslationLimits,
    Translator,
)
from polydub.serving.ort import available_cpus

# config.pbtxt parameters and their defaults. num_beams: the beams of a request asking fewer
# n-best; the limits: nllb_translate.TranslationLimits; encoder_file / decoder_file: ONNX files
# in the version folder, written by the export; *_providers: onnxruntime providers in order of
# preference (cpu, cuda, tensorrt); searches: beam searches run at once over a batch's sentences
# (threads sharing the sessions; 0: one per CPU this instance may use); intra_op_threads: per
# session, 0: as many as keep every CPU busy (see cpu_share); trt_engine_cache_path: TensorRT
# engines (GPU profile).
TOKENIZER_DIR = "tokenizer"  # in the version folder: tokenizer.json and generation.json
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
PARAMETERS = {
    "tokenizer_dir": TOKENIZER_DIR,
    "num_beams": "4",
    "max_source_tokens": "512",
    "max_length_cap": "256",
    "max_len_a": "2.0",
    "max_len_b": "16",
    "encoder_file": ENCODER_FILE,
    "decoder_file": DECODER_FILE,
    "encoder_providers": "cpu",
    "decoder_providers": "cpu",
    "searches": "0",
    "intra_op_threads": "0",
    "trt_engine_cache_path": "",
}
CANCELLED = "nllb: cancelled by the client"


def cpu_share(searches: int, threads: int) -> tuple[int, int]:
    """(searches, intra-op threads per session) with 0s resolved: one search per CPU this
    process may use, and the threads that keep every CPU busy. A session's intra-op pool is
    shared by all its concurrent runs, and each run also works on its calling thread: S
    searches over a pool of T threads keep S + T - 1 CPUs busy."""
    cpus = available_cpus()
    searches = searches or cpus
    return searches, threads or max(1, cpus - searches + 1)


def _names(value: str) -> list[str]:
    return [name for name in value.split(",") if name.strip()]


class NllbService:
    """The tokenizer, the search limits and the graphs of one exported checkpoint."""

    def __init__(self, version_dir: Path, params: Mapping[str, str], device_id: int = 0) -> None:
        tokenizer_dir = version_dir / params["tokenizer_dir"]
        if not (tokenizer_dir / GENERATION_FILE).is_file():
            raise MissingExport(tokenizer_dir / GENERATION_FILE, "nllb")
        for key in ("encoder_file", "decoder_file"):
            if not (version_dir / params[key]).is_file():
                raise MissingExport(version_dir / params[key], "nllb")
        generation = GenerationConfig.load(tokenizer_dir)
        self.default_beams = min(int(params["num_beams"]), generation.max_beams)
        limits = TranslationLimits(
            max_source_tokens=int(params["max_source_tokens"]),
            max_length_cap=int(params["max_length_cap"]),
            max_len_a=float(params["max_len_a"]),
            max_len_b=int(params["max_len_b"]),
        )
        cache = params["trt_engine_cache_path"]
        searches, threads = cpu_share(int(params["searches"]), int(params["intra_op_threads"]))
        self.graphs = OrtNllb(
            version_dir / params["encoder_file"],
            version_dir / params["decoder_file"],
            threads=threads,
            encoder_providers=_names(params["encoder_providers"]),
            decoder_providers=_names(params["decoder_providers"]),
            device_id=device_id,
            trt_cache_dir=f"{cache}/{device_id}" if cache else None,
        )
        self.translator = Translator(
            NllbCodec(tokenizer_dir), self.graphs, generation, limits, searches
        )
        self.pad_id = generation.pad_token_id

    def run(
        self,
        requests: Sequence[Inputs],
        cancelled: Sequence[Callable[[], bool]] | None = None,
    ) -> list[Outcome]:
        """Translate every row of every request as one batch; one outcome per request.
        ``cancelled[i]()``: whether request i's client went away (asked between decode steps);
        such a request stops being decoded and fails."""
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
        item_owner = [i for i, rows in owners for _ in range(rows)]
        gone: set[int] = set()  # requests whose client went away

        def items_cancelled(running: Sequence[int]) -> set[int]:
            # Once per step of each search: each request of a running item is asked once (a
            # request of 100 rows is not asked 100 times, only by each search holding some of
            # them), and once gone it stays gone (not asked again).
            if cancelled is not None:
                for owner in {item_owner[item] for item in running} - gone:
                    if cancelled[owner]():
                        gone.add(owner)
            return {item for item in running if item_owner[item] in gone}

        try:
            results = self.translator.translate(items, items_cancelled)
        except Exception as exc:  # a failed batch fails its requests, never the model
            for i, _ in owners:
                outcomes[i] = Failure(f"nllb: {type(exc).__name__}: {exc}")
            return outcomes

        offset = 0
        for i, count in owners:
            mine = results[offset : offset + count]
            offset += count
            if i in gone:
                outcomes[i] = Failure(CANCELLED, cancelled=True)
                continue
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
