"""Triton BLS model ``nllb``: one request is one segment's whole translation, with n-best output.

Inputs (per request row): text, src_lang, tgt_lang (FLORES-200 codes, BYTES), optional n_best and
max_length (INT32; max_length 0 or absent: from the source length). Outputs: translations [n] and
scores [n] (length-normalised log-probabilities, best first) and token_ids [n, T] (the decoded
sequences as ``generate`` returns them, padded with <pad>).

Every request of one dynamic batch is tokenised, encoded by ONE ``nllb_encoder`` call, and decoded
by ONE ``nllb_decoder`` call per step for all beams of all requests (requests may differ in target
language, beam count and length; finished ones leave the batch). The search itself is
``nllb_search.py`` beside this file, shared with the exporter's and the tests' in-process checks.

Needs numpy and ``tokenizers`` in Triton's Python environment.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nllb_search import (  # after the path insert
    GenerationConfig,
    Limits,
    NllbCodec,
    TranslationItem,
    Translator,
)


class TritonNllb:
    """The two graphs as BLS calls, split into chunks no larger than their max_batch_size."""

    def __init__(self, encoder: str, decoder: str, encoder_rows: int, decoder_rows: int) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.encoder_rows = encoder_rows
        self.decoder_rows = decoder_rows

    def _infer(
        self, model: str, feeds: dict[str, np.ndarray], outputs: list[str], max_rows: int
    ) -> list[np.ndarray]:
        rows = len(next(iter(feeds.values())))
        parts: list[list[np.ndarray]] = []
        for start in range(0, rows, max_rows):
            request = pb_utils.InferenceRequest(
                model_name=model,
                requested_output_names=outputs,
                inputs=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + max_rows]))
                    for name, value in feeds.items()
                ],
            )
            response = request.exec()
            if response.has_error():
                raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
            # Copies: the response's shared memory goes away with the response.
            parts.append(
                [
                    np.array(pb_utils.get_output_tensor_by_name(response, n).as_numpy())
                    for n in outputs
                ]
            )
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(chunks, axis=0) for chunks in zip(*parts, strict=True)]

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        key, value = self._infer(
            self.encoder,
            {"input_ids": input_ids, "attention_mask": attention_mask},
            ["cross_key", "cross_value"],
            self.encoder_rows,
        )
        return key, value

    def decode(self, feeds: dict[str, Any]) -> Any:
        outputs = ["top_log_probs", "top_ids", "present_key", "present_value"]
        top_log_probs, top_ids, key, value = self._infer(
            self.decoder, feeds, outputs, self.decoder_rows
        )
        return top_log_probs, top_ids, key, value


def _strings(request: Any, name: str) -> list[str]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    values = tensor.as_numpy().reshape(-1)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _ints(request: Any, name: str, rows: int, default: int) -> list[int]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * rows
    values = [int(v) for v in tensor.as_numpy().reshape(-1)]
    if len(values) != rows:
        raise ValueError(f"'{name}' has {len(values)} values for {rows} texts")
    return values


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in (config.get("parameters") or {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        tokenizer_dir = os.path.join(version_dir, params.get("tokenizer_dir", "tokenizer"))
        if not os.path.isfile(os.path.join(tokenizer_dir, "generation.json")):
            raise pb_utils.TritonModelException(
                f"nllb: no tokenizer/generation.json under {version_dir}: "
                "run `polydub models export` for this repository first"
            )
        generation = GenerationConfig.load(tokenizer_dir)
        self.default_beams = min(int(params.get("num_beams", "4")), generation.max_beams)
        limits = Limits(
            max_source_tokens=int(params.get("max_source_tokens", "512")),
            max_length_cap=int(params.get("max_length_cap", "256")),
            max_len_a=float(params.get("max_len_a", "2.0")),
            max_len_b=int(params.get("max_len_b", "16")),
        )
        model = TritonNllb(
            encoder=params.get("encoder_model", "nllb_encoder"),
            decoder=params.get("decoder_model", "nllb_decoder"),
            encoder_rows=int(params.get("encoder_max_batch_size", "32")),
            decoder_rows=int(params.get("decoder_max_batch_size", "256")),
        )
        self.translator = Translator(NllbCodec(tokenizer_dir), model, generation, limits)
        self.pad_id = generation.pad_token_id

    def _items(self, request: Any) -> list[TranslationItem]:
        texts = _strings(request, "text")
        sources = _strings(request, "src_lang")
        targets = _strings(request, "tgt_lang")
        if not len(texts) == len(sources) == len(targets):
            raise ValueError("text, src_lang and tgt_lang need one value per row")
        n_best = _ints(request, "n_best", len(texts), 1)
        max_length = _ints(request, "max_length", len(texts), 0)
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

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        items: list[TranslationItem] = []
        owners: list[tuple[int, int]] = []  # (request index, rows)
        for i, request in enumerate(requests):
            try:
                rows = self._items(request)
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"nllb: {exc}", pb_utils.TritonError.INVALID_ARG)
                )
                continue
            owners.append((i, len(rows)))
            items.extend(rows)
        if not items:
            return responses
        try:
            results = self.translator.translate(items)
        except Exception as exc:  # a failed batch fails its requests, never the stub
            error = pb_utils.TritonError(f"nllb: {type(exc).__name__}: {exc}")
            for i, _ in owners:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return responses

        offset = 0
        for i, rows in owners:
            mine = results[offset : offset + rows]
            offset += rows
            n = max(len(c) for c in mine)
            width = max(len(cand.tokens) for c in mine for cand in c)
            texts = np.full((rows, n), b"", dtype=np.object_)
            scores = np.full((rows, n), -np.inf, dtype=np.float32)
            tokens = np.full((rows, n, width), self.pad_id, dtype=np.int64)
            for r, candidates in enumerate(mine):
                for j, cand in enumerate(candidates):
                    texts[r, j] = cand.text.encode("utf-8")
                    scores[r, j] = cand.score
                    tokens[r, j, : len(cand.tokens)] = cand.tokens
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("translations", texts),
                    pb_utils.Tensor("scores", scores),
                    pb_utils.Tensor("token_ids", tokens),
                ]
            )
        return responses
