"""Speech / background separation through the Triton model ``separation``.

``SeparationClient`` separates 16 kHz mono audio: chunk STFTs go to Triton one request each
(``CONCURRENCY`` in flight, so memory stays bounded and the server batches chunks of this and
other jobs), masks come back, and ``polydub.serving.separation`` does the inverse STFT and the
cross-fade. ``TritonSeparator`` is the mix's ``BackgroundSeparator``: it separates a job's mix
WAV (any rate, any channels) and writes ``background = original - speech`` at the WAV's own rate,
the 16 kHz speech estimate upsampled and taken out of every channel (dialogue is mixed
centre, equally in each). The stems therefore sum back to the original exactly (to float32
rounding), and the background keeps the original's full bandwidth; what speech holds above 8 kHz
(sibilants) stays in it. On request it also writes the 16 kHz speech stem, which the speech
stages hear instead of the extracted audio (its level is the channels' mean, not ffmpeg's -3 dB
down-mix: the models normalise level). A mask of the wrong shape or not finite raises
``ConfigurationError`` (``separation_bad_output``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from polydub.errors import ConfigurationError
from polydub.media.pcm import create_wav, read_wav, write_wav
from polydub.orchestrator.inference.vad import Infer, as_audio
from polydub.serving.names import SEPARATION, SeparationIn, SeparationOut
from polydub.serving.separation import (
    SAMPLE_RATE,
    OverlapAdd,
    Stems,
    batches,
    chunk_starts,
    masked_waveform,
)

MODEL = SEPARATION
CONCURRENCY = 16  # chunks in flight per job: 16 x 6 s of spectrogram, ~25 MB


@dataclass(frozen=True)
class SeparationFigures:
    """What one separation did, for the quality report."""

    seconds: float  # audio separated
    chunks: int
    speech_ratio_db: float | None  # speech stem energy over the input's; None for silence
    elapsed_s: float
    realtime_factor: float  # elapsed / audio seconds (below 1: faster than real time)


class SeparationClient:
    def __init__(self, client: Infer, *, model: str = MODEL) -> None:
        self.client = client
        self.model = model

    async def _mask(self, spec: NDArray[np.float32]) -> NDArray[np.float32]:
        result = await self.client.infer(
            self.model, {SeparationIn.SPECTROGRAM: spec[None]}, [SeparationOut.SPEECH_MASK]
        )
        returned = result.get(SeparationOut.SPEECH_MASK)
        mask: NDArray[np.float32] = np.asarray(
            returned[0] if returned is not None and len(returned) else (), np.float32
        )
        # A checkpoint exported for another STFT, or one that diverged, is a model problem the
        # stage falls back from, not a crash in the overlap-add (or NaN in every dub's mix).
        if mask.shape != spec.shape[1:] or not np.all(np.isfinite(mask)):
            raise ConfigurationError(
                f"the {self.model} model returned a mask of shape {mask.shape} "
                f"(finite: {bool(np.all(np.isfinite(mask)))}) for a spectrogram {spec.shape}",
                code="separation_bad_output",
            )
        return mask

    async def separate(self, audio16k: NDArray[Any]) -> Stems:
        """Speech and background stems of 16 kHz mono audio of any length."""
        audio = as_audio(audio16k)
        result = OverlapAdd(audio.size)
        pending = batches(audio, CONCURRENCY)
        while True:
            group = await asyncio.to_thread(next, pending, None)
            if group is None:
                break
            starts, specs = group
            masks = await asyncio.gather(*(self._mask(spec) for spec in specs))
            await asyncio.to_thread(_fold, result, starts, specs, masks)
        return result.stems(audio)


def _fold(
    result: OverlapAdd,
    starts: list[int],
    specs: NDArray[np.float32],
    masks: list[NDArray[np.float32]],
) -> None:
    for start, spec, mask in zip(starts, specs, masks, strict=True):
        result.add(start, masked_waveform(spec, mask))


def speech_ratio_db(speech: NDArray[np.float32], audio: NDArray[np.float32]) -> float | None:
    total = float(np.sum(np.square(audio, dtype=np.float64)))
    if total <= 0.0:
        return None
    share = float(np.sum(np.square(speech, dtype=np.float64))) / total
    return round(10 * math.log10(max(share, 1e-12)), 2)


class TritonSeparator:
    """The mix's ``BackgroundSeparator``, served by Triton; ``figures`` of the last run."""

    def __init__(self, client: Infer, *, model: str = MODEL) -> None:
        self.separation = SeparationClient(client, model=model)
        self.figures: SeparationFigures | None = None

    async def separate(
        self, mix_wav: Path, out_wav: Path, *, speech_wav: Path | None = None
    ) -> Path:
        """``background = original - speech`` into ``out_wav``; the 16 kHz mono speech stem into
        ``speech_wav`` too when given (what VAD, diarization and ASR then hear)."""
        started = time.perf_counter()
        original, rate = await asyncio.to_thread(read_wav, mix_wav, mmap=True)
        mono16k = await asyncio.to_thread(_mono16k, original, rate)
        stems = await self.separation.separate(mono16k)
        await asyncio.to_thread(_write_background, original, rate, stems.speech, out_wav)
        if speech_wav is not None:
            await asyncio.to_thread(write_wav, speech_wav, stems.speech, SAMPLE_RATE)
        elapsed = time.perf_counter() - started
        seconds = original.shape[0] / rate
        self.figures = SeparationFigures(
            seconds=round(seconds, 3),
            chunks=len(chunk_starts(mono16k.size)),
            speech_ratio_db=speech_ratio_db(stems.speech, mono16k),
            elapsed_s=round(elapsed, 3),
            realtime_factor=round(elapsed / seconds, 4) if seconds else 0.0,
        )
        return out_wav


def _mono16k(samples: NDArray[Any], rate: int) -> NDArray[np.float32]:
    mono: NDArray[np.float32] = np.mean(samples, axis=1, dtype=np.float32)
    if rate == SAMPLE_RATE:
        return mono
    g = math.gcd(rate, SAMPLE_RATE)
    out: NDArray[np.float32] = resample_poly(mono, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return out


def _write_background(
    original: NDArray[Any], rate: int, speech16k: NDArray[np.float32], out_wav: Path
) -> None:
    frames, channels = original.shape
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        speech = resample_poly(speech16k, rate // g, SAMPLE_RATE // g).astype(np.float32)
    else:
        speech = speech16k
    speech = np.pad(speech[:frames], (0, max(0, frames - speech.size)))
    out = create_wav(out_wav, frames, channels, rate)
    block = 60 * rate  # a minute at a time: the output stays a memory map
    for i in range(0, frames, block):
        out[i : i + block] = original[i : i + block] - speech[i : i + block, None]
    out.flush()
    del out
