"""Whisper decoding: log-mel features, the two ONNX graphs in onnxruntime, batched greedy decoding
with timestamp rules, segments and detokenization.

Shared by the Triton BLS model beside it (model.py) and the in-process checks of
``polydub.export.whisper``: the served loop and the reference loop are the same code. Everything
but ``OrtGraphs`` needs numpy only (onnxruntime is imported when the graphs are opened).
The graphs it drives come from ``polydub.export.whisper``:

* encoder: ``input_features`` [B, n_mels, 3000] -> ``cross_key.{i}`` / ``cross_value.{i}``
  [B, heads, 1500, head_dim] for every decoder layer i (plus ``last_hidden_state``), so the
  cross-attention projections run once per window, batched;
* decoder: ``input_ids`` [B, S], ``past_key.{i}`` / ``past_value.{i}`` [B, heads, P, head_dim]
  (P = 0 on the first step), the cross tensors -> ``logits`` [B, vocab] (last position) and
  ``present_key.{i}`` / ``present_value.{i}`` [B, heads, P + S, head_dim].

The logit rules follow openai/whisper and transformers' Whisper generation (suppress blank at the
start, suppress non-speech tokens, timestamp pairing/monotonicity, max initial timestamp, prefer
timestamps when their total probability beats every text token), so greedy tokens equal
``WhisperForConditionalGeneration.generate(..., return_timestamps=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000: every window is padded to 30 s
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames -> 1500 encoder positions
TIME_PRECISION = 0.02  # seconds per timestamp token
TASKS = ("transcribe", "translate", "detect")
FACTS_FILE = "whisper.json"

# --------------------------------------------------------------------------------- features


def _hz_to_mel(freq: Array) -> Array:
    """Slaney's mel scale (librosa / transformers ``mel_scale="slaney"``): linear below 1 kHz."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = freq / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    above = freq >= 1000.0
    return np.where(above, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / log_step, mels)


def _mel_to_hz(mels: Array) -> Array:
    mels = np.asarray(mels, dtype=np.float64)
    freq = mels * (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(log_step * (mels - 15.0)), freq)


def mel_filters(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> Array:
    """Triangular slaney-normalised filters [n_mels, n_fft // 2 + 1] from 0 Hz to 8 kHz.

    The same bank as librosa.filters.mel(sr=16000, n_fft=400, n_mels=...) that Whisper ships.
    """
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(8000.0)), n_mels + 2)
    hz = _mel_to_hz(mel_points)
    widths = np.diff(hz)
    slopes = hz[:, None] - fft_freqs[None, :]
    lower = -slopes[:-2] / widths[:-1, None]
    upper = slopes[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(lower, upper))
    filters *= (2.0 / (hz[2 : n_mels + 2] - hz[:n_mels]))[:, None]
    return np.asarray(filters)


_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
_FILTERS: dict[int, Array] = {}


def log_mel_spectrogram(audios: Sequence[Array], n_mels: int) -> Array:
    """Whisper's input features [B, n_mels, 3000] float32 for 16 kHz mono float PCM.

    Each clip is cut or zero-padded to 30 s, then: centred STFT (reflect padding, periodic Hann,
    400-point FFT, hop 160), power spectrum, mel filters, log10 clamped at 1e-10, floor at the
    clip's own maximum - 8, and (x + 4) / 4. An empty clip is 30 s of silence.
    """
    if n_mels not in _FILTERS:
        _FILTERS[n_mels] = mel_filters(n_mels)
    filters = _FILTERS[n_mels]
    out = np.empty((len(audios), n_mels, N_FRAMES), dtype=np.float32)
    for i, audio in enumerate(audios):
        clip = np.zeros(N_SAMPLES, dtype=np.float64)
        samples = np.asarray(audio, dtype=np.float64).reshape(-1)[:N_SAMPLES]
        clip[: samples.size] = samples
        padded = np.pad(clip, N_FFT // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
        power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # [3001, 201]
        mel = filters @ power[:-1].T  # the last frame is dropped, as Whisper does
        log_spec = np.log10(np.maximum(mel, 1e-10))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        out[i] = (log_spec + 4.0) / 4.0
    return out


# ------------------------------------------------------------------------------------ facts


@dataclass(frozen=True)
class WhisperFacts:
    """What decoding needs to know about one exported checkpoint (``tokenizer/whisper.json``)."""

    checkpoint: str
    n_mels: int
    decoder_layers: int
    decoder_heads: int
    head_dim: int
    vocab_size: int
    max_target_positions: int
    eot: int
    sot: int
    translate: int
    transcribe: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict[str, int]  # Whisper language code -> token id (the ones detection considers)
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    max_initial_timestamp_index: int | None = 50
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperFacts:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # older exports had more keys
        data["suppress_tokens"] = tuple(data["suppress_tokens"])
        data["begin_suppress_tokens"] = tuple(data["begin_suppress_tokens"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> WhisperFacts:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def prompt_length(self) -> int:
        return 3  # <|startoftranscript|> <|xx|> <|transcribe|>; timestamps are on

    def task_token(self, task: str) -> int:
        return self.translate if task == "translate" else self.transcribe


# -------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable character table used by Whisper's byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


class Detokenizer:
    """Token ids -> text for Whisper's byte-level BPE; special and timestamp tokens are dropped."""

    def __init__(self, vocab: dict[str, int], eot: int) -> None:
        byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        self._bytes: dict[int, bytes] = {}
        for token, index in vocab.items():
            if index < eot:
                try:
                    self._bytes[index] = bytes(byte_of[c] for c in token)
                except KeyError:
                    continue  # not a byte-level token (never sampled as text)
        self.eot = eot

    @classmethod
    def load(cls, tokenizer_dir: str | Path, eot: int) -> Detokenizer:
        vocab = json.loads((Path(tokenizer_dir) / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab, eot)

    def decode(self, ids: Sequence[int]) -> str:
        data = b"".join(self._bytes.get(int(i), b"") for i in ids if 0 <= int(i) < self.eot)
        return data.decode("utf-8", errors="replace")


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


# onnxruntime execution providers by the short names the BLS config uses
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OrtGraphs:
    """The encoder and the decoder graph in onnxruntime sessions of this process.

    States are OrtValues bound with io_binding on the decoder's device: the cross-attention K/V
    of a batch are written once by the encoder and stay there for every step, each step's
    present K/V are the next step's past as they are, and only the logits [b, vocab] come back
    to numpy. A step costs the decoder's compute and nothing else. (Served as separate Triton
    models, the cross K/V of a batch of 16 windows, 590 MB at whisper-base sizes, crossed the
    python backend's shared memory twice per step: the decode ran 2.4-3x slower.)

    ``providers``: short names in order of preference (``cpu``, ``cuda``, ``tensorrt``); those
    this onnxruntime build lacks are skipped, the CPU provider is always last.
    ``threads``: intra-op threads per session; 0: one per CPU this process may run on, set
    explicitly because onnxruntime's own default pins its threads to cores, and on a shared or
    busy host a pinned thread cannot move off a loaded core (every parallel step then waits
    for it: served decodes ran up to 2x slower than the unpinned in-process ones under load).
    """

    def __init__(
        self,
        encoder: str | Path,
        decoder: str | Path,
        facts: WhisperFacts,
        *,
        threads: int = 0,
        encoder_providers: Sequence[str] = ("cpu",),
        decoder_providers: Sequence[str] = ("cpu",),
        device_id: int = 0,
        trt_cache_dir: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.facts = facts
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        self.encoder = ort.InferenceSession(
            str(encoder),
            options,
            providers=self._providers(encoder_providers, device_id, trt_cache_dir),
        )
        self.decoder = ort.InferenceSession(
            str(decoder),
            options,
            providers=self._providers(decoder_providers, device_id, trt_cache_dir),
        )
        on_gpu = "CUDAExecutionProvider" in self.decoder.get_providers()
        self.device = "cuda" if on_gpu else "cpu"
        self.device_id = device_id if on_gpu else 0
        n = facts.decoder_layers
        self.cross_names = [f"cross_{k}.{i}" for i in range(n) for k in ("key", "value")]
        self.past_names = [f"past_{k}.{i}" for i in range(n) for k in ("key", "value")]
        self.present_names = [f"present_{k}.{i}" for i in range(n) for k in ("key", "value")]

    def _providers(
        self, names: Sequence[str], device_id: int, trt_cache_dir: str | None
    ) -> list[Any]:
        available = set(self._ort.get_available_providers())
        chosen: list[Any] = []
        for name in names:
            provider = PROVIDERS.get(name.strip().lower())
            if provider is None:
                raise ValueError(f"unknown provider {name!r}; expected one of {sorted(PROVIDERS)}")
            if provider not in available or provider == "CPUExecutionProvider":
                continue
            settings: dict[str, Any] = {"device_id": device_id}
            if provider == "TensorrtExecutionProvider":
                settings.update(trt_fp16_enable=True, trt_engine_cache_enable=True)
                if trt_cache_dir:
                    settings["trt_engine_cache_path"] = trt_cache_dir
            chosen.append((provider, settings))
        return [*chosen, "CPUExecutionProvider"]

    @property
    def providers(self) -> dict[str, list[str]]:
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    def _value(self, array: Array) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.device, self.device_id
        )

    def encode(self, features: Array) -> list[Any]:
        binding = self.encoder.io_binding()
        binding.bind_cpu_input("input_features", np.ascontiguousarray(features, np.float32))
        for name in self.cross_names:  # last_hidden_state is left unbound: not fetched
            binding.bind_output(name, self.device, self.device_id)
        self.encoder.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def step(self, input_ids: Array, past: list[Any] | None, cross: list[Any]) -> tuple[Array, Any]:
        f = self.facts
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        if past is None:  # the first step: an empty past (length 0), from the host
            empty = np.zeros((input_ids.shape[0], f.decoder_heads, 0, f.head_dim), np.float32)
            for name in self.past_names:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(self.past_names, past, strict=True):
                binding.bind_ortvalue_input(name, value)
        for name, value in zip(self.cross_names, cross, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device, self.device_id)
        self.decoder.run_with_iobinding(binding)
        logits, *presents = binding.get_outputs()
        return np.array(logits.numpy(), dtype=np.float32), presents

    def select(self, state: list[Any], rows: Array) -> list[Any]:
        """Compaction (a few times per batch at most): through the host, rows taken in numpy."""
        return [self._value(value.numpy()[rows]) for value in state]


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


# ------------------------------------------------------------------------------ segments


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the window
    end: float
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "tokens": list(self.tokens),
            "avg_logprob": round(self.avg_logprob, 6),
        }


def build_segments(
    tokens: Sequence[int],
    logprobs: Sequence[float],
    facts: WhisperFacts,
    detok: Detokenizer,
    duration: float,
) -> list[Segment]:
    """Cut sampled tokens into timed segments: ``<|t0|> text <|t1|>`` pairs.

    Text before any timestamp starts at 0; text left open at the end (no closing timestamp, e.g.
    when max_new_tokens ran out) ends at ``duration``. Times are clamped to [0, duration].
    """
    tb = facts.timestamp_begin
    segments: list[Segment] = []
    start: float | None = None
    text: list[int] = []
    span: list[int] = []
    span_lp: list[float] = []
    last_time = 0.0

    def close(end: float) -> None:
        nonlocal start, text, span, span_lp
        words = detok.decode(text)
        if text and words.strip():
            begin = min(max(start if start is not None else 0.0, 0.0), duration)
            stop = min(max(end, begin), duration)
            mean = float(np.mean(span_lp)) if span_lp else 0.0
            segments.append(Segment(begin, stop, words, tuple(span), mean))
        start, text, span, span_lp = None, [], [], []

    for token, logprob in zip(tokens, logprobs, strict=True):
        if token >= tb:
            t = (token - tb) * TIME_PRECISION
            if text:
                span.append(token)
                span_lp.append(logprob)
                close(t)
            else:
                start, span, span_lp = t, [token], [logprob]
            last_time = t
        elif token < facts.eot:
            if start is None:
                start = last_time if segments else 0.0
            text.append(token)
            span.append(token)
            span_lp.append(logprob)
    close(duration)
    return segments
