"""Speech synthesis with MMS-TTS (VITS) served by Triton: one model per language, on demand.

    speech = await tts.synthesize("Hello there.", "eng", speaking_rate=1.1, seed=7)
    fitted = await tts.synthesize_to_fit(text, "spa", target_seconds=2.4)

Models: ``mms_tts_<iso3>`` (``export/mms_tts.py``) takes ``input_ids`` / ``attention_mask``
[B, T] int64, ``length_scale`` (1 / speaking rate), ``noise_scale``, ``noise_scale_duration``
[B, 1] float32 and ``seed`` [B, 1] int64, and returns ``waveform`` [B, S] float32,
``waveform_lengths`` [B, 1] int64 and ``durations`` [B, T] float32 (frames per token at rate 1,
before rounding up). ``mms_tts_tokenizer`` (python) returns a language's ``TtsTokenizer`` spec.

Client side: text normalisation and tokenisation (``polydub.orchestrator.text_normalize``), with
``input_ids`` padded to a multiple of ``TOKEN_BUCKET`` so that Triton's dynamic batcher, which
batches equal shapes, can put sentences of similar length from concurrent jobs in one run.
With ``batch_rows`` > 1 (for GPU serving), concurrent syntheses in this process (a job's segments,
other jobs') go out as multi-row requests of sentences of similar length (``tts_batch``).

Fitting a time slot (the first step of the timing strategy; bounded time-stretch comes after,
elsewhere): synthesise at rate 1 with a seed, then solve for the length scale from the returned
``durations``. The duration noise depends only on the seed, so with the same seed the frame count
at any length scale is exactly ``sum(ceil(durations * length_scale))``: the second synthesis
lands on the predicted length, with no iteration.

Loading on demand: Triton runs with explicit model control. ``ModelPool`` loads a model the first
time a request needs it (repository API), counts the requests using it, and ``unload_idle()``
unloads a model nobody has used for ``idle_seconds``, never one in use here, and never one
Triton saw an inference on within that time (so a pool in one worker does not unload a model that
another worker is using). In the orchestrator the worker creates one ``TtsClient`` per process
and runs ``pool.run_idle_unloader()`` as a background task for the process's lifetime
(``task = asyncio.create_task(tts.pool.run_idle_unloader())``, cancelled on shutdown). If another
process unloads a model between our load and our request, the request reloads it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError, InvalidInput, PolydubError
from polydub.infra.triton import Deadline, WorkDeadlines
from polydub.languages import get_language
from polydub.orchestrator.inference.tts_batch import Row, RowBatcher
from polydub.orchestrator.text_normalize import TtsTokenizer
from polydub.serving.names import MMS_TTS_PREFIX, MMS_TTS_TOKENIZER, SAMPLE_RATE, MmsTtsOut
from polydub.settings import get_settings

MODEL_PREFIX = MMS_TTS_PREFIX
TOKENIZER_MODEL = MMS_TTS_TOKENIZER
OUTPUTS = tuple(MmsTtsOut)
TOKEN_BUCKET = 16
MAX_CHARACTERS = 2000  # one dubbing segment; longer text is the caller's job to split
MIN_RATE, MAX_RATE = 0.25, 4.0  # what synthesize accepts at all
FIT_MIN_RATE, FIT_MAX_RATE = 0.85, 1.5  # what still sounds natural when fitting a slot


class Triton(Protocol):
    """What this module needs from Triton: ``polydub.infra.triton.InferenceClient`` fits."""

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]: ...

    async def load_model(self, model: str) -> None: ...

    async def unload_model(self, model: str) -> None: ...

    async def repository_index(self) -> list[dict[str, Any]]: ...

    async def statistics(self, model: str) -> dict[str, Any]: ...


def model_name(language: str) -> str:
    return f"{MODEL_PREFIX}{language}"


@dataclass(frozen=True)
class Speech:
    samples: NDArray[np.float32]  # mono
    sample_rate: int
    speaking_rate: float = 1.0
    seed: int = 0

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


# ---------------------------------------------------------------------------------- model pool


class ModelPool:
    """Triton models loaded on demand and unloaded when idle (explicit model control)."""

    def __init__(
        self,
        triton: Triton,
        *,
        idle_seconds: float = 600.0,
        pinned: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.triton = triton
        self.idle_seconds = idle_seconds
        self.pinned = set(pinned)  # never unloaded by the idle policy
        self._clock = clock
        self._loaded: set[str] = set()
        self._in_use: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def loaded(self) -> frozenset[str]:
        return frozenset(self._loaded)

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    async def available(self) -> set[str]:
        """Models in Triton's repository, loaded or not."""
        return {entry["name"] for entry in await self.triton.repository_index()}

    async def ensure_loaded(self, model: str) -> None:
        if model in self._loaded:
            return
        async with self._lock(model):
            if model in self._loaded:
                return
            if model not in await self.available():
                raise ConfigurationError(
                    f"model {model!r} is not in Triton's model repository; export it with "
                    "'polydub models export' (MMS-TTS voices: family mms_tts, "
                    "POLYDUB_MMS_TTS_LANGUAGES)",
                    code="model_missing",
                    detail={"model": model},
                )
            await self.triton.load_model(model)
            self._loaded.add(model)
            self._last_used[model] = self._clock()

    def forget(self, model: str) -> None:
        """Someone else unloaded it: the next use loads it again."""
        self._loaded.discard(model)

    @contextlib.asynccontextmanager
    async def using(self, model: str) -> AsyncIterator[None]:
        """Load if needed and keep the model from being unloaded while the block runs."""
        self._in_use[model] = self._in_use.get(model, 0) + 1
        try:
            await self.ensure_loaded(model)
            yield
        finally:
            self._in_use[model] -= 1
            self._last_used[model] = self._clock()

    async def unload_idle(self) -> list[str]:
        """Unload the models idle for longer than ``idle_seconds``; returns their names."""
        now = self._clock()
        unloaded = []
        for model in sorted(self._loaded - self.pinned):
            if (
                self._in_use.get(model, 0)
                or now - self._last_used.get(model, now) < self.idle_seconds
            ):
                continue
            if now - await self._last_inference(model) < self.idle_seconds:
                continue  # another process used it recently
            async with self._lock(model):
                if self._in_use.get(model, 0) or model not in self._loaded:
                    continue  # picked up while we asked Triton
                await self.triton.unload_model(model)
                self._loaded.discard(model)
                unloaded.append(model)
        return unloaded

    async def _last_inference(self, model: str) -> float:
        try:
            stats = await self.triton.statistics(model)
        except PolydubError:
            return 0.0
        return int(stats.get("last_inference", 0) or 0) / 1000.0  # ms since the epoch

    async def run_idle_unloader(self, interval: float | None = None) -> None:
        """Background task: check every ``interval`` seconds (default idle_seconds / 4)."""
        period = interval if interval is not None else max(self.idle_seconds / 4, 1.0)
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(PolydubError):
                await self.unload_idle()


# ---------------------------------------------------------------------------------- client


class TtsClient:
    def __init__(
        self,
        triton: Triton,
        *,
        pool: ModelPool | None = None,
        idle_seconds: float = 600.0,
        deadline: Deadline | None = None,
        batch_rows: int = 1,
    ) -> None:
        """``deadline``: per input token at speaking rate 1 (the audio, and the work, grow with
        both); default: the settings' ``triton_tts_seconds_per_token``. ``batch_rows``: the most
        concurrent sentences one request carries (up to the models' max_batch_size, 8); 1, the
        default, sends each alone: on CPU a batch costs more than its rows (tts_batch)."""
        self.triton = triton
        self.deadlines = WorkDeadlines(
            deadline or Deadline.from_settings(get_settings().triton_tts_seconds_per_token)
        )
        self.pool = pool or ModelPool(triton, idle_seconds=idle_seconds)
        self.pool.pinned.add(TOKENIZER_MODEL)
        self._tokenizers: dict[str, TtsTokenizer] = {}
        self.batcher = RowBatcher(self._infer, max_rows=batch_rows, bucket=TOKEN_BUCKET)

    async def languages(self) -> list[str]:
        """The languages with an exported voice (ISO 639-3)."""
        reply = await self._tokenizer_request("")
        codes: list[str] = json.loads(reply)["languages"]
        available = await self.pool.available()
        return [c for c in codes if model_name(c) in available]

    async def tokenizer(self, language: str) -> TtsTokenizer:
        code = get_language(language).code
        cached = self._tokenizers.get(code)
        if cached is not None:
            return cached
        voices = await self.languages()
        if code not in voices:
            raise ConfigurationError(
                f"no MMS-TTS voice for {code!r} in the model repository; exported voices: "
                f"{', '.join(voices) or 'none'} (export it with 'polydub models export "
                f"--family mms_tts' and POLYDUB_MMS_TTS_LANGUAGES={code})",
                code="tts_voice_missing",
                detail={"language": code, "available": voices},
            )
        spec = TtsTokenizer.from_json(await self._tokenizer_request(code))
        self._tokenizers[code] = spec
        return spec

    async def _tokenizer_request(self, code: str) -> bytes:
        await self.pool.ensure_loaded(TOKENIZER_MODEL)
        result = await self.triton.infer(
            TOKENIZER_MODEL,
            {"language": np.array([code.encode("utf-8")], dtype=np.object_)},
            ["tokenizer"],
        )
        value = result["tokenizer"].reshape(-1)[0]
        return value if isinstance(value, bytes) else str(value).encode("utf-8")

    async def synthesize(
        self,
        text: str,
        language: str,
        *,
        speaking_rate: float = 1.0,
        noise_scale: float = 0.667,
        noise_scale_duration: float = 0.8,
        seed: int | None = None,
    ) -> Speech:
        """Speech for ``text``; empty text (or nothing speakable) gives empty speech."""
        if not MIN_RATE <= speaking_rate <= MAX_RATE:
            raise InvalidInput(
                f"speaking_rate must be in [{MIN_RATE}, {MAX_RATE}], got {speaking_rate}"
            )
        speech, _ = await self._synthesize(
            text, language, 1.0 / speaking_rate, noise_scale, noise_scale_duration, seed
        )
        return speech

    async def synthesize_to_fit(
        self,
        text: str,
        language: str,
        target_seconds: float,
        *,
        min_rate: float = FIT_MIN_RATE,
        max_rate: float = FIT_MAX_RATE,
        tolerance: float = 0.03,
        noise_scale: float = 0.667,
        noise_scale_duration: float = 0.8,
        seed: int | None = None,
    ) -> Speech:
        """Speech as close to ``target_seconds`` as a speaking rate in [min_rate, max_rate] gets,
        never longer than the slot when a rate in range can avoid it.

        Measures at rate 1, then re-synthesises once at the rate that the predicted durations
        say fits (same seed, so the prediction is exact). When even ``max_rate`` is too slow the
        result is longer than the slot: the caller time-stretches or borrows silence next.
        """
        if not target_seconds > 0 or not math.isfinite(target_seconds):
            raise InvalidInput(f"target_seconds must be > 0, got {target_seconds}")
        if not MIN_RATE <= min_rate <= 1.0 <= max_rate <= MAX_RATE:
            raise InvalidInput(
                f"need {MIN_RATE} <= min_rate <= 1 <= max_rate <= {MAX_RATE}, "
                f"got {min_rate}, {max_rate}"
            )
        seed = _seed(seed)
        first, durations = await self._synthesize(
            text, language, 1.0, noise_scale, noise_scale_duration, seed
        )
        if durations is None or abs(first.duration - target_seconds) <= tolerance * target_seconds:
            return first
        spec = await self.tokenizer(language)
        target_frames = target_seconds * spec.sampling_rate / spec.hop_length
        length_scale = solve_length_scale(durations, target_frames, 1.0 / max_rate, 1.0 / min_rate)
        speech, _ = await self._synthesize(
            text, language, length_scale, noise_scale, noise_scale_duration, seed
        )
        return speech

    async def _synthesize(
        self,
        text: str,
        language: str,
        length_scale: float,
        noise_scale: float,
        noise_scale_duration: float,
        seed: int | None,
    ) -> tuple[Speech, NDArray[np.float32] | None]:
        """The speech and its per-token durations (frames at length scale 1, before rounding)."""
        code = get_language(language).code
        speaking_rate = 1.0 / length_scale
        if not (0.0 <= noise_scale <= 2.0 and 0.0 <= noise_scale_duration <= 2.0):
            raise InvalidInput("noise scales must be in [0, 2]")
        if len(text) > MAX_CHARACTERS:
            raise InvalidInput(
                f"text of {len(text)} characters is longer than {MAX_CHARACTERS}: "
                "synthesise it sentence by sentence"
            )
        seed = _seed(seed)
        if not text.strip():
            return Speech(np.zeros(0, np.float32), SAMPLE_RATE, speaking_rate, seed), None
        spec = await self.tokenizer(code)
        ids = spec.encode(text)
        if not ids:
            return Speech(np.zeros(0, np.float32), spec.sampling_rate, speaking_rate, seed), None
        row = Row(ids, length_scale, noise_scale, noise_scale_duration, seed)
        done = await self.batcher.run(model_name(code), row)  # with concurrent ones: tts_batch
        return Speech(done.samples, spec.sampling_rate, speaking_rate, seed), done.durations

    async def _infer(
        self, model: str, feeds: dict[str, NDArray[Any]], units: float
    ) -> dict[str, NDArray[Any]]:
        for attempt in range(2):
            async with self.pool.using(model):
                try:
                    with self.deadlines.admit(units) as deadline:
                        return await self.triton.infer(model, feeds, OUTPUTS, deadline=deadline)
                except ConfigurationError as exc:
                    # Unloaded by another process since we loaded it: load again, once.
                    if exc.code != "model_not_found" or attempt:
                        raise
                    self.pool.forget(model)
        raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- helpers


def _seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(2**31 - 1)
    if seed < 0:
        raise InvalidInput(f"seed must be >= 0, got {seed}")
    return int(seed)


def request_inputs(
    ids: Sequence[int],
    length_scale: float,
    noise_scale: float,
    noise_scale_duration: float,
    seed: int,
    bucket: int = TOKEN_BUCKET,
) -> dict[str, NDArray[Any]]:
    """One request's tensors, ``input_ids`` padded to a multiple of ``bucket``."""
    width = max(bucket, -(-len(ids) // bucket) * bucket)
    input_ids = np.zeros((1, width), dtype=np.int64)
    input_ids[0, : len(ids)] = ids
    attention_mask = np.zeros((1, width), dtype=np.int64)
    attention_mask[0, : len(ids)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "length_scale": np.array([[length_scale]], dtype=np.float32),
        "noise_scale": np.array([[noise_scale]], dtype=np.float32),
        "noise_scale_duration": np.array([[noise_scale_duration]], dtype=np.float32),
        "seed": np.array([[seed]], dtype=np.int64),
    }


def predicted_frames(durations: NDArray[np.float32], length_scale: float) -> int:
    """The frame count the graph will produce: the same float32 arithmetic as the graph."""
    product = np.asarray(durations, np.float32) * np.float32(length_scale)
    return max(int(np.ceil(product).sum()), 1)


def solve_length_scale(
    durations: NDArray[np.float32], target_frames: float, low: float, high: float
) -> float:
    """The length scale in [low, high] whose frame count is closest to ``target_frames`` from
    below (the slot is not overrun), or ``low`` when even that overruns it."""
    if predicted_frames(durations, low) > target_frames:
        return low
    if predicted_frames(durations, high) <= target_frames:
        return high
    for _ in range(40):  # frames(scale) is a non-decreasing step function
        middle = (low + high) / 2
        if predicted_frames(durations, middle) <= target_frames:
            low = middle
        else:
            high = middle
    return low
