"""Whisper transcription as a Triton BLS model: one request = one audio window (<= 30 s).

All requests of one dynamic batch are decoded together: log-mel features in numpy, ONE call to
``whisper_encoder`` with batch B (cross-attention K/V for every decoder layer), then a greedy
loop calling ``whisper_decoder`` once per step for the whole batch with the KV cache
(``whisper_runtime.greedy_decode``). Finished rows are compacted away when fewer than half are
live. Language detection (when ``language`` is empty) uses the first step's logits.

Inputs (batch dim first, one row per request):
  audio     FP32  [-1]  16 kHz mono PCM, any length (longer than 30 s is cut; clients chunk)
  language  BYTES [1]   Whisper code ("en"), empty: detect
  task      BYTES [1]   transcribe | translate | detect (language only, no text)
  max_new_tokens INT32 [1], optional: a lower bound than the configured one (0: configured)
Outputs:
  text BYTES [1], tokens INT64 [-1] (sampled tokens, eot excluded; -1 pads multi-row requests),
  segments BYTES [1] (JSON list of {start, end, text, tokens, avg_logprob}, seconds in the window),
  detected_language BYTES [1], language_probability FP32 [1], avg_logprob FP32 [1],
  no_speech_prob FP32 [1]

Parameters: max_new_tokens (default 224: the most any request may ask for), encoder_model, decoder_model, bls_timeout_ms.
The tokenizer and decoding facts are read from ``<version>/tokenizer/`` (written by the export).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
import whisper_runtime as wr


def _param(config: dict[str, Any], key: str, default: str) -> str:
    value = (config.get("parameters") or {}).get(key, {}).get("string_value", "")
    return str(value) if value else default


def _error(message: str, invalid: bool = False) -> Any:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid else None
    if code is not None:
        return pb_utils.TritonError(message, code)
    return pb_utils.TritonError(message)


class TritonBackend:
    """The decoder backend of ``greedy_decode`` over BLS calls.

    The cross-attention tensors are the encoder's response tensors, passed to every decoder call
    as they are (same names on both graphs), so the loop never copies them on its side; only
    compaction makes new ones.
    """

    def __init__(self, facts: wr.WhisperFacts, timeout_ms: int) -> None:
        self.facts = facts
        self.timeout_us = timeout_ms * 1000
        n = facts.decoder_layers
        self.cross_names = [f"cross_{k}.{i}" for i in range(n) for k in ("key", "value")]
        self.past_names = [f"past_{k}.{i}" for i in range(n) for k in ("key", "value")]
        self.present_names = [f"present_{k}.{i}" for i in range(n) for k in ("key", "value")]

    def _exec(self, model: str, inputs: list[Any], outputs: list[str]) -> Any:
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=inputs,
            timeout=self.timeout_us,
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
        return response

    def encode(self, features: np.ndarray) -> list[Any]:
        response = self._exec(
            self.facts.encoder_model,
            [pb_utils.Tensor("input_features", features)],
            self.cross_names,
        )
        return [pb_utils.get_output_tensor_by_name(response, n) for n in self.cross_names]

    def step(
        self, input_ids: np.ndarray, past: list[Any] | None, cross: list[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        f = self.facts
        if past is None:
            empty = np.zeros((input_ids.shape[0], f.decoder_heads, 0, f.head_dim), np.float32)
            past_tensors = [pb_utils.Tensor(name, empty) for name in self.past_names]
        else:
            # Present -> past: a tensor's name is fixed, so the arrays are re-wrapped (the
            # response tensors stay referenced until then: they own the shared memory).
            past_tensors = [
                pb_utils.Tensor(name, t.as_numpy())
                for name, t in zip(self.past_names, past, strict=True)
            ]
        response = self._exec(
            f.decoder_model,
            [pb_utils.Tensor("input_ids", input_ids), *past_tensors, *cross],
            ["logits", *self.present_names],
        )
        logits = pb_utils.get_output_tensor_by_name(response, "logits").as_numpy()
        presents = [pb_utils.get_output_tensor_by_name(response, n) for n in self.present_names]
        return np.array(logits, dtype=np.float32), presents

    def select(self, state: list[Any], rows: np.ndarray) -> list[Any]:
        return [pb_utils.Tensor(t.name(), np.ascontiguousarray(t.as_numpy()[rows])) for t in state]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        tokenizer_dir = os.path.join(version_dir, "tokenizer")
        facts_path = os.path.join(tokenizer_dir, wr.FACTS_FILE)
        if not os.path.isfile(facts_path):
            raise pb_utils.TritonModelException(
                f"{facts_path} is missing: run `polydub models export` for the whisper family"
            )
        facts = wr.WhisperFacts.load(facts_path)
        encoder = _param(config, "encoder_model", facts.encoder_model)
        decoder = _param(config, "decoder_model", facts.decoder_model)
        self.facts = wr.WhisperFacts.from_dict(
            {**json.loads(facts.to_json()), "encoder_model": encoder, "decoder_model": decoder}
        )
        self.detok = wr.Detokenizer.load(tokenizer_dir, self.facts.eot)
        self.max_new_tokens = int(_param(config, "max_new_tokens", "224"))
        self.backend = TritonBackend(self.facts, int(_param(config, "bls_timeout_ms", "60000")))

    def _read(self, request: Any) -> tuple[list[np.ndarray], list[wr.DecodeOptions], list[int]]:
        audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy()
        if audio.dtype != np.float32:
            raise ValueError(f"audio must be FP32, got {audio.dtype}")
        audio = audio.reshape(audio.shape[0], -1) if audio.ndim >= 1 else audio.reshape(1, -1)
        rows = audio.shape[0]
        languages = self._strings(request, "language", rows)
        tasks = self._strings(request, "task", rows)
        options = []
        for lang, task in zip(languages, tasks, strict=True):
            opt = wr.DecodeOptions(language=lang or None, task=task or "transcribe")
            wr.validate_options(opt, self.facts)
            if audio.shape[1] == 0:  # nothing to transcribe: language and no-speech only
                opt = wr.DecodeOptions(language=opt.language, task="detect")
            options.append(opt)
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        limits = [self.max_new_tokens] * rows
        tensor = pb_utils.get_input_tensor_by_name(request, "max_new_tokens")
        if tensor is not None:  # optional: 0 or absent means the configured bound
            given = [int(v) for v in tensor.as_numpy().reshape(-1)]
            given = given * rows if len(given) == 1 else given
            if len(given) != rows or min(given) < 0:
                raise ValueError("max_new_tokens: one value >= 0 per audio row")
            limits = [min(g, self.max_new_tokens) if g > 0 else self.max_new_tokens for g in given]
        return [audio[r] for r in range(rows)], options, limits

    @staticmethod
    def _strings(request: Any, name: str, rows: int) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [""] * rows
        values = [
            v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in tensor.as_numpy().reshape(-1)
        ]
        if len(values) == 1:
            return [values[0].strip()] * rows
        if len(values) != rows:
            raise ValueError(f"{name}: {len(values)} values for {rows} audio rows")
        return [v.strip() for v in values]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        audios: list[np.ndarray] = []
        options: list[wr.DecodeOptions] = []
        limits: list[int] = []
        owners: list[int] = []  # request index of each row
        for i, request in enumerate(requests):
            try:
                rows, opts, bounds = self._read(request)
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc), invalid=True))
                continue
            audios += rows
            options += opts
            limits += bounds
            owners += [i] * len(rows)
        if not audios:
            return responses
        try:
            features = wr.log_mel_spectrogram(audios, self.facts.n_mels)
            results = wr.greedy_decode(self.backend, features, options, self.facts, limits)
        except Exception as exc:
            for i in set(owners):
                responses[i] = pb_utils.InferenceResponse(error=_error(f"whisper: {exc}"))
            return responses

        per_request: dict[int, list[tuple[np.ndarray, wr.DecodeResult]]] = {}
        for owner, audio, result in zip(owners, audios, results, strict=True):
            per_request.setdefault(owner, []).append((audio, result))
        for i, rows in per_request.items():
            responses[i] = self._respond(rows)
        return responses

    def _respond(self, rows: list[tuple[np.ndarray, wr.DecodeResult]]) -> Any:
        texts, segments, langs, probs, avg, no_speech = [], [], [], [], [], []
        width = max(len(r.tokens) for _, r in rows)
        tokens = np.full((len(rows), width), -1, dtype=np.int64)
        for row, (audio, result) in enumerate(rows):
            duration = min(audio.size, wr.N_SAMPLES) / wr.SAMPLE_RATE
            segs = wr.build_segments(
                result.tokens, result.logprobs, self.facts, self.detok, duration
            )
            texts.append(self.detok.decode(result.tokens).encode("utf-8"))
            segments.append(json.dumps([s.to_dict() for s in segs]).encode("utf-8"))
            langs.append(result.language.encode("utf-8"))
            probs.append(result.language_probability)
            avg.append(result.avg_logprob)
            no_speech.append(result.no_speech_prob)
            tokens[row, : len(result.tokens)] = result.tokens

        def column(values: list[Any], dtype: Any) -> np.ndarray:
            return np.array(values, dtype=dtype).reshape(len(rows), 1)

        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text", column(texts, np.object_)),
                pb_utils.Tensor("tokens", tokens),
                pb_utils.Tensor("segments", column(segments, np.object_)),
                pb_utils.Tensor("detected_language", column(langs, np.object_)),
                pb_utils.Tensor("language_probability", column(probs, np.float32)),
                pb_utils.Tensor("avg_logprob", column(avg, np.float32)),
                pb_utils.Tensor("no_speech_prob", column(no_speech, np.float32)),
            ]
        )
