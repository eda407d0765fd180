"""Whisper transcription as a Triton BLS model: one request = one audio window (<= 30 s).

All requests of one dynamic batch are decoded together, in this process: log-mel features in
numpy, ONE encoder run for the batch (cross-attention K/V of every decoder layer), then a greedy
loop running the decoder graph once per step for the whole batch with a KV cache
(``whisper_runtime.greedy_decode``). Both graphs run in onnxruntime sessions of this model
instance (``whisper_runtime.OrtGraphs``): the cross K/V and the KV cache stay in the sessions'
memory (CPU or GPU) for the whole decode, so a step costs the decoder's compute only.
Finished rows are compacted away when fewer than half are live. Language detection (when
``language`` is empty) uses the first step's logits.

Inputs (batch dim first, one row per request):
  audio     FP32  [-1]  16 kHz mono PCM, any length (longer than 30 s is cut; clients chunk)
  language  BYTES [1]   Whisper code ("en"), empty: detect
  task      BYTES [1]   transcribe | translate | detect (language only, no text)
  max_new_tokens INT32 [1], optional: a lower bound than the configured one (0: configured)
  min_new_tokens INT32 [1], optional: eot is suppressed before that many tokens (0: none)
Outputs:
  text BYTES [1], tokens INT64 [-1] (sampled tokens, eot excluded; -1 pads multi-row requests),
  segments BYTES [1] (JSON list of {start, end, text, tokens, avg_logprob}, seconds in the window),
  detected_language BYTES [1], language_probability FP32 [1], avg_logprob FP32 [1],
  no_speech_prob FP32 [1]

Parameters: max_new_tokens (default 224: the most any request may ask for); encoder_file and
decoder_file (ONNX files in the version folder, written by the export); encoder_providers and
decoder_providers (onnxruntime providers in order of preference: cpu, cuda, tensorrt);
intra_op_threads (per session, 0: one per core); trt_engine_cache_path.
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
        self.facts = wr.WhisperFacts.load(facts_path)
        self.detok = wr.Detokenizer.load(tokenizer_dir, self.facts.eot)
        self.max_new_tokens = int(_param(config, "max_new_tokens", "224"))
        graphs = {}
        for graph in ("encoder", "decoder"):
            path = os.path.join(version_dir, _param(config, f"{graph}_file", f"{graph}.onnx"))
            if not os.path.isfile(path):
                raise pb_utils.TritonModelException(
                    f"{path} is missing: run `polydub models export` for the whisper family"
                )
            graphs[graph] = path
        # KIND_GPU instances (configs/gpu.pbtxt) run their sessions on their own GPU.
        device_id = int(args.get("model_instance_device_id") or 0)
        cache = _param(config, "trt_engine_cache_path", "")
        self.backend = wr.OrtGraphs(
            graphs["encoder"],
            graphs["decoder"],
            self.facts,
            threads=int(_param(config, "intra_op_threads", "0")),
            encoder_providers=_param(config, "encoder_providers", "cpu").split(","),
            decoder_providers=_param(config, "decoder_providers", "cpu").split(","),
            device_id=device_id,
            trt_cache_dir=os.path.join(cache, str(device_id)) if cache else None,
        )
        pb_utils.Logger.log_info(f"whisper: onnxruntime providers {self.backend.providers}")

    def _read(
        self, request: Any
    ) -> tuple[list[np.ndarray], list[wr.DecodeOptions], list[int], list[int]]:
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
        given = self._counts(request, "max_new_tokens", rows)
        limits = [min(g, self.max_new_tokens) if g > 0 else self.max_new_tokens for g in given]
        minimums = self._counts(request, "min_new_tokens", rows)
        return [audio[r] for r in range(rows)], options, limits, minimums

    @staticmethod
    def _counts(request: Any, name: str, rows: int) -> list[int]:
        """An optional INT32 count per row (one value: for every row); absent: 0."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [0] * rows
        given = [int(v) for v in tensor.as_numpy().reshape(-1)]
        given = given * rows if len(given) == 1 else given
        if len(given) != rows or min(given) < 0:
            raise ValueError(f"{name}: one value >= 0 per audio row")
        return given

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
        minimums: list[int] = []
        owners: list[int] = []  # request index of each row
        for i, request in enumerate(requests):
            try:
                rows, opts, bounds, mins = self._read(request)
            except Exception as exc:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc), invalid=True))
                continue
            audios += rows
            options += opts
            limits += bounds
            minimums += mins
            owners += [i] * len(rows)
        if not audios:
            return responses
        try:
            features = wr.log_mel_spectrogram(audios, self.facts.n_mels)
            results = wr.greedy_decode(
                self.backend, features, options, self.facts, limits, min_new_tokens=minimums
            )
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
