"""The ``whisper`` Triton model's work: one request = one audio window (<= 30 s).

All requests of one dynamic batch are decoded together, in this process: log-mel features in
numpy, ONE encoder run for the batch (cross-attention K/V of every decoder layer), then a greedy
loop running the decoder graph once per step for the whole batch with a KV cache
(``whisper_decode.greedy_decode``). Both graphs run in onnxruntime sessions of this model
instance (``whisper_ort.OrtGraphs``): the cross K/V and the KV cache stay in the sessions'
memory (CPU or GPU) for the whole decode, so a step costs the decoder's compute only.
Finished rows are compacted away when fewer than half are live. Language detection (when
``language`` is empty) uses the first step's logits.

Inputs (``names.WhisperIn``; batch dim first, one row per request):
  audio     FP32  [-1]  16 kHz mono PCM, any length (longer than 30 s is cut; clients chunk)
  language  BYTES [1]   Whisper code ("en"), empty: detect
  task      BYTES [1]   transcribe | translate | detect (language only, no text)
  max_new_tokens INT32 [1], optional: a lower bound than the configured one (0: configured)
  min_new_tokens INT32 [1], optional: eot is suppressed before that many tokens (0: none)
Outputs (``names.WhisperOut``):
  text BYTES [1], tokens INT64 [-1] (sampled tokens, eot excluded; -1 pads multi-row requests),
  segments BYTES [1] (JSON list of {start, end, text, tokens, avg_logprob}, seconds in the window),
  detected_language BYTES [1], language_probability FP32 [1], avg_logprob FP32 [1],
  no_speech_prob FP32 [1]

The tokenizer and decoding facts are read from ``<version>/tokenizer/`` (written by the export).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from polydub.serving.batch import (
    Failure,
    Inputs,
    MissingExport,
    Outcome,
    Outputs,
    strings,
    text_column,
)
from polydub.serving.names import SAMPLE_RATE, WhisperIn, WhisperOut
from polydub.serving.whisper_decode import (
    DecodeOptions,
    DecodeResult,
    greedy_decode,
    validate_options,
)
from polydub.serving.whisper_features import N_FRAMES, N_SAMPLES, Array, log_mel_spectrogram
from polydub.serving.whisper_ort import OrtGraphs
from polydub.serving.whisper_text import FACTS_FILE, Detokenizer, WhisperFacts, build_segments

TOKENIZER_DIR = "tokenizer"
# config.pbtxt parameters and their defaults. max_new_tokens: the most any request may ask for;
# encoder_file / decoder_file: ONNX files in the version folder, written by the export;
# *_providers: onnxruntime providers in order of preference (cpu, cuda, tensorrt);
# intra_op_threads: per session, 0: one per core; trt_engine_cache_path: per GPU below it;
# encoder_cpu_arena / decoder_cpu_arena: onnxruntime's CPU arena per session, encoder_batch:
# windows per encoder run (CPU; whisper_ort.OrtGraphs says why: memory); cross_cache_mib: the
# most memory a batch's cross-attention K/V may hold, so the windows decoded together (0: no bound;
# see ``WhisperService.group_size``).
PARAMETERS = {
    "max_new_tokens": "224",
    "encoder_file": "encoder.onnx",
    "decoder_file": "decoder.onnx",
    "encoder_providers": "cpu",
    "decoder_providers": "cpu",
    "intra_op_threads": "0",
    "trt_engine_cache_path": "",
    "encoder_cpu_arena": "false",
    "decoder_cpu_arena": "true",
    "encoder_batch": "4",
    "cross_cache_mib": "0",
}


def group_size(facts: WhisperFacts, cross_cache_mib: int) -> int:
    """Windows decoded together so that their cross-attention K/V (every decoder layer's, in
    float32, held for the whole decode) stay within ``cross_cache_mib`` (0: unbounded).

    It is what grows with a batch and with depth: 37 MB per window at whisper-base, 491 MB at
    large-v3, where a batch of 16 alone held 7.9 GB per instance (``bench.large_size``). Above
    the bound the batch is decoded in groups, one after the other: slower, but an instance's
    peak no longer follows the batcher. At least one window, whatever the bound."""
    if cross_cache_mib < 0:
        raise ValueError("cross_cache_mib must be >= 0")
    if cross_cache_mib == 0:
        return 2**31
    per_window = 2 * facts.decoder_layers * facts.decoder_heads * facts.head_dim
    per_window *= (N_FRAMES // 2) * 4  # the encoder's stride-2 convolution halves the frames
    return max(1, cross_cache_mib * 2**20 // per_window)


class WhisperService:
    """The graphs, the facts and the detokenizer of one exported checkpoint, in one instance."""

    def __init__(self, version_dir: Path, params: Mapping[str, str], device_id: int = 0) -> None:
        tokenizer_dir = version_dir / TOKENIZER_DIR
        facts_path = tokenizer_dir / FACTS_FILE
        if not facts_path.is_file():
            raise MissingExport(facts_path, "whisper")
        self.facts = WhisperFacts.load(facts_path)
        self.detok = Detokenizer.load(tokenizer_dir, self.facts.eot)
        self.max_new_tokens = int(params["max_new_tokens"])
        graphs = {}
        for graph in ("encoder", "decoder"):
            path = version_dir / params[f"{graph}_file"]
            if not path.is_file():
                raise MissingExport(path, "whisper")
            graphs[graph] = path
        # KIND_GPU instances (configs/gpu.pbtxt) run their sessions on their own GPU.
        cache = params["trt_engine_cache_path"]
        self.backend = OrtGraphs(
            graphs["encoder"],
            graphs["decoder"],
            self.facts,
            threads=int(params["intra_op_threads"]),
            encoder_providers=params["encoder_providers"].split(","),
            decoder_providers=params["decoder_providers"].split(","),
            device_id=device_id,
            trt_cache_dir=str(Path(cache) / str(device_id)) if cache else None,
            encoder_arena=_flag(params["encoder_cpu_arena"]),
            decoder_arena=_flag(params["decoder_cpu_arena"]),
            encoder_batch=int(params["encoder_batch"]),
        )
        self.group_size = group_size(self.facts, int(params["cross_cache_mib"]))

    def run(self, requests: Sequence[Inputs]) -> list[Outcome]:
        """Decode every row of every request, ``group_size`` windows at a time (the whole batch
        at once when it fits); one outcome per request."""
        outcomes: list[Outcome] = [Failure("not decoded")] * len(requests)
        audios: list[Array] = []
        options: list[DecodeOptions] = []
        limits: list[int] = []
        minimums: list[int] = []
        owners: list[int] = []  # request index of each row
        for i, request in enumerate(requests):
            try:
                rows, opts, bounds, mins = self._read(request)
            except Exception as exc:
                outcomes[i] = Failure(str(exc), invalid=True)
                continue
            audios += rows
            options += opts
            limits += bounds
            minimums += mins
            owners += [i] * len(rows)
        if not audios:
            return outcomes
        try:
            results: list[DecodeResult] = []
            for start in range(0, len(audios), self.group_size):
                group = slice(start, start + self.group_size)
                features = log_mel_spectrogram(audios[group], self.facts.n_mels)
                results += greedy_decode(
                    self.backend,
                    features,
                    options[group],
                    self.facts,
                    limits[group],
                    min_new_tokens=minimums[group],
                )
        except Exception as exc:
            for i in set(owners):
                outcomes[i] = Failure(f"whisper: {exc}")
            return outcomes

        per_request: dict[int, list[tuple[Array, DecodeResult]]] = {}
        for owner, audio, result in zip(owners, audios, results, strict=True):
            per_request.setdefault(owner, []).append((audio, result))
        for i, decoded in per_request.items():
            outcomes[i] = self._outputs(decoded)
        return outcomes

    def _read(
        self, request: Inputs
    ) -> tuple[list[Array], list[DecodeOptions], list[int], list[int]]:
        audio = request[WhisperIn.AUDIO]
        if audio.dtype != np.float32:
            raise ValueError(f"audio must be FP32, got {audio.dtype}")
        audio = audio.reshape(audio.shape[0], -1) if audio.ndim >= 1 else audio.reshape(1, -1)
        rows = audio.shape[0]
        languages = _per_row(request, WhisperIn.LANGUAGE, rows)
        tasks = _per_row(request, WhisperIn.TASK, rows)
        options = []
        for lang, task in zip(languages, tasks, strict=True):
            opt = DecodeOptions(language=lang or None, task=task or "transcribe")
            validate_options(opt, self.facts)
            if audio.shape[1] == 0:  # nothing to transcribe: language and no-speech only
                opt = DecodeOptions(language=opt.language, task="detect")
            options.append(opt)
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio contains NaN or infinite samples")
        given = _counts(request, WhisperIn.MAX_NEW_TOKENS, rows)
        limits = [min(g, self.max_new_tokens) if g > 0 else self.max_new_tokens for g in given]
        minimums = _counts(request, WhisperIn.MIN_NEW_TOKENS, rows)
        return [audio[r] for r in range(rows)], options, limits, minimums

    def _outputs(self, rows: list[tuple[Array, DecodeResult]]) -> Outputs:
        texts, segments, langs = [], [], []
        probs, avg, no_speech = [], [], []
        width = max(len(r.tokens) for _, r in rows)
        tokens = np.full((len(rows), width), -1, dtype=np.int64)
        for row, (audio, result) in enumerate(rows):
            duration = min(audio.size, N_SAMPLES) / SAMPLE_RATE
            segs = build_segments(result.tokens, result.logprobs, self.facts, self.detok, duration)
            texts.append(self.detok.decode(result.tokens))
            segments.append(json.dumps([s.to_dict() for s in segs]))
            langs.append(result.language)
            probs.append(result.language_probability)
            avg.append(result.avg_logprob)
            no_speech.append(result.no_speech_prob)
            tokens[row, : len(result.tokens)] = result.tokens

        def column(values: list[float]) -> Array:
            return np.array(values, dtype=np.float32).reshape(len(rows), 1)

        return {
            WhisperOut.TEXT: text_column(texts, len(rows)),
            WhisperOut.TOKENS: tokens,
            WhisperOut.SEGMENTS: text_column(segments, len(rows)),
            WhisperOut.DETECTED_LANGUAGE: text_column(langs, len(rows)),
            WhisperOut.LANGUAGE_PROBABILITY: column(probs),
            WhisperOut.AVG_LOGPROB: column(avg),
            WhisperOut.NO_SPEECH_PROB: column(no_speech),
        }


def _flag(value: str) -> bool:
    if value.strip().lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value.strip().lower() in ("true", "1")


def _counts(request: Inputs, name: str, rows: int) -> list[int]:
    """An optional INT32 count per row (one value: for every row); absent: 0."""
    tensor = request.get(name)
    if tensor is None:
        return [0] * rows
    given = [int(v) for v in tensor.reshape(-1)]
    given = given * rows if len(given) == 1 else given
    if len(given) != rows or min(given) < 0:
        raise ValueError(f"{name}: one value >= 0 per audio row")
    return given


def _per_row(request: Inputs, name: str, rows: int) -> list[str]:
    """A BYTES value per row (one value: for every row); absent: empty."""
    tensor = request.get(name)
    if tensor is None:
        return [""] * rows
    values = strings(tensor)
    if len(values) == 1:
        return [values[0].strip()] * rows
    if len(values) != rows:
        raise ValueError(f"{name}: {len(values)} values for {rows} audio rows")
    return [v.strip() for v in values]
