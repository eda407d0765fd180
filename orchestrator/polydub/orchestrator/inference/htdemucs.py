"""Speech / background separation through the Triton model ``separation_htdemucs`` (HT-Demucs).

``HtDemucsClient`` separates audio at any rate, mono or [samples, channels]: resampled to the
model's 44.1 kHz, chunked by ``polydub.serving.htdemucs`` (HT-Demucs's own STFT beside the
graph), one request per chunk with ``CONCURRENCY`` in flight (Triton batches chunks of
concurrent jobs), the speech stem resampled back, and ``background = input - speech`` at the
input's own rate: the stems sum back to the input exactly (to float32 rounding). The chunk's
shape is the graph's (its training segment), given by the caller or read from one export
(``Chunking.of_waveform`` of the graph's waveform input). Outputs of the wrong shape or not
finite raise ``ConfigurationError`` (``separation_bad_output``), as for the mask net.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from polydub.errors import ConfigurationError
from polydub.media.pcm import create_wav, read_wav
from polydub.orchestrator.inference.blocks import chunk_weights, resampled_blocks, resampled_length
from polydub.orchestrator.inference.separation import SeparationFigures
from polydub.orchestrator.inference.vad import Infer
from polydub.serving import htdemucs as front
from polydub.serving.names import SEPARATION_HTDEMUCS, HtDemucsIn, HtDemucsOut
from polydub.serving.separation import Stems

MODEL = SEPARATION_HTDEMUCS
# The chunk of every released HT-Demucs (htdemucs, htdemucs_ft, htdemucs_6s): its 7.8 s training
# segment, stereo; ``polydub.export.htdemucs.tiny_checkpoint`` writes the same by default.
RELEASED = front.Chunking(2, int(Fraction(39, 5) * front.SAMPLE_RATE))
SPEECH_RATE = 16000  # the speech stem the speech stages hear
CONCURRENCY = 4  # chunks in flight per job: 4 x 7.8 s of stereo waveform + spectrogram, ~60 MB
BLOCK_SECONDS = 30  # what the separator's resampling passes hold at once: a few MB
Scratch = NDArray[np.float32]  # a scratch file mapped [samples, channels]


def resample(audio: NDArray[Any], rate: int, to: int) -> NDArray[np.float32]:
    """Along the first axis (samples)."""
    if rate == to:
        return np.asarray(audio, np.float32)
    g = math.gcd(rate, to)
    out: NDArray[np.float32] = resample_poly(audio, to // g, rate // g, axis=0).astype(np.float32)
    return out


class HtDemucsClient:
    def __init__(self, client: Infer, chunking: front.Chunking, *, model: str = MODEL) -> None:
        self.client = client
        self.chunking = chunking
        self.model = model

    async def chunk_speech(
        self, wave: NDArray[np.float32], spec: NDArray[np.float32]
    ) -> NDArray[np.float64]:
        result = await self.client.infer(
            self.model,
            {HtDemucsIn.WAVEFORM: wave[None], HtDemucsIn.SPECTROGRAM: spec[None]},
            [HtDemucsOut.SPEECH_SPECTROGRAM, HtDemucsOut.SPEECH_WAVEFORM],
        )
        out_spec = np.asarray(result.get(HtDemucsOut.SPEECH_SPECTROGRAM, ()), np.float32)
        out_wave = np.asarray(result.get(HtDemucsOut.SPEECH_WAVEFORM, ()), np.float32)
        shapes_fit = out_spec.shape == spec[None].shape and out_wave.shape == wave[None].shape
        if not shapes_fit or not (np.all(np.isfinite(out_spec)) and np.all(np.isfinite(out_wave))):
            raise ConfigurationError(
                f"the {self.model} model returned {out_spec.shape} and {out_wave.shape} "
                f"(finite or not) for a chunk {wave.shape}",
                code="separation_bad_output",
            )
        # The inverse STFT of a 7.8 s chunk takes tens of ms: off the loop, which also serves
        # the job's heartbeats and the worker's other jobs.
        return await asyncio.to_thread(
            front.speech_of, out_spec[0], out_wave[0], self.chunking.length
        )

    async def separate_native(self, audio: NDArray[Any]) -> Stems:
        """Stems of ``audio`` at 44.1 kHz (mono or [samples, channels])."""
        channels = front.as_channels(audio, self.chunking.channels)
        result = front.OverlapAdd(self.chunking, channels.shape[1])
        pending = front.batches(channels, self.chunking, CONCURRENCY)
        while True:
            group = await asyncio.to_thread(next, pending, None)
            if group is None:
                break
            starts, waves, specs = group
            pieces = await asyncio.gather(
                *(self.chunk_speech(w, s) for w, s in zip(waves, specs, strict=True))
            )
            for start, piece in zip(starts, pieces, strict=True):
                result.add(start, piece)
        return front.stems(audio, result.speech())

    async def separate(self, audio: NDArray[Any], rate: int) -> Stems:
        """Stems of ``audio`` at ``rate``: background = audio - speech, exactly, at ``rate``."""
        native = await asyncio.to_thread(resample, audio, rate, front.SAMPLE_RATE)
        stems = await self.separate_native(native)
        return await asyncio.to_thread(at_rate, audio, rate, stems)


def at_rate(audio: NDArray[Any], rate: int, native: Stems) -> Stems:
    """Stems of ``audio`` at ``rate`` from those of its 44.1 kHz copy: the speech resampled back
    (to ``audio``'s length), the background ``audio - speech``."""
    x = np.asarray(audio, np.float32)
    speech = resample(native.speech, front.SAMPLE_RATE, rate)[: x.shape[0]]
    missing = x.shape[0] - speech.shape[0]
    speech = np.pad(speech, [(0, missing)] + [(0, 0)] * (x.ndim - 1))
    return Stems(speech, (x - speech).astype(np.float32))


class ServedInfer(Infer, Protocol):
    """A Triton client that also answers model metadata (``InferenceClient`` does)."""

    async def model_metadata(self, model: str) -> dict[str, Any]: ...


async def served_chunking(client: ServedInfer, model: str = MODEL) -> front.Chunking:
    """The chunk of the served graph, from its waveform input's dims in Triton's metadata
    (the config is auto-completed from the graph: the checkpoint's own training segment)."""
    metadata = await client.model_metadata(model)
    for tensor in metadata.get("inputs", []):
        if tensor.get("name") == HtDemucsIn.WAVEFORM:
            dims = [int(d) for d in tensor.get("shape", [])]
            if len(dims) >= 2 and min(dims[-2:]) > 0:
                return front.Chunking.of_waveform(dims)
    raise ConfigurationError(
        f"the {model} model declares no fixed waveform input [batch, channels, length]: "
        f"{metadata.get('inputs')}",
        code="separation_bad_config",
    )


class HtDemucsSeparator:
    """The mix's ``BackgroundSeparator`` on HT-Demucs (as ``TritonSeparator`` on the mask net):
    ``background = original - speech`` at the WAV's own rate and channels, the 16 kHz mono speech
    stem on request, ``figures`` of the last run. A mix with the model's channels (stereo) is
    separated as is; any other channel count as its mean, the speech taken out of every channel.

    Streamed: the mix is resampled to 44.1 kHz a block at a time into a scratch file beside
    ``out_wav``, chunks are read from it and their speech cross-faded into a second one, then
    both stems are written a block at a time. Memory stays at a few blocks and chunks (tens of
    MB) whatever the length; disk takes two scratch copies at 44.1 kHz float32 (about 1.3 GB
    each for an hour of stereo) until ``separate`` returns.
    """

    def __init__(
        self, client: Infer, *, chunking: front.Chunking = RELEASED, model: str = MODEL
    ) -> None:
        self.separation = HtDemucsClient(client, chunking, model=model)
        self.figures: SeparationFigures | None = None

    @classmethod
    async def served(cls, client: ServedInfer, *, model: str = MODEL) -> HtDemucsSeparator:
        """A separator with the served graph's chunk (Triton's metadata)."""
        return cls(client, chunking=await served_chunking(client, model), model=model)

    async def separate(
        self, mix_wav: Path, out_wav: Path, *, speech_wav: Path | None = None
    ) -> Path:
        started = time.perf_counter()
        original, rate = await asyncio.to_thread(read_wav, mix_wav, mmap=True)
        frames = original.shape[0]
        chunking = self.separation.chunking
        with tempfile.TemporaryDirectory(prefix=".htdemucs-", dir=out_wav.parent) as scratch:
            native = await asyncio.to_thread(
                _native, original, rate, chunking.channels, Path(scratch) / "native.f32"
            )
            speech = _scratch(Path(scratch) / "speech.f32", native.shape)
            await self._separate_native(native, speech)
            energies = await asyncio.to_thread(
                _write_stems, original, rate, speech, out_wav, speech_wav
            )
            del native, speech  # the memory maps, before their files go
        elapsed = time.perf_counter() - started
        seconds = frames / rate
        self.figures = SeparationFigures(
            seconds=round(seconds, 3),
            chunks=len(chunking.starts(resampled_length(frames, rate, front.SAMPLE_RATE))),
            speech_ratio_db=_ratio_db(*energies),
            elapsed_s=round(elapsed, 3),
            realtime_factor=round(elapsed / seconds, 4) if seconds else 0.0,
        )
        return out_wav

    async def _separate_native(self, native: NDArray[np.float32], speech: Scratch) -> None:
        """Speech of ``native`` [samples, C] into ``speech``: chunks in groups of
        ``CONCURRENCY``, cross-faded in place, then divided by the fades' sum."""
        chunking = self.separation.chunking
        samples = native.shape[0]
        starts = chunking.starts(samples)
        fade = chunking.fade()
        for i in range(0, len(starts), CONCURRENCY):
            group = starts[i : i + CONCURRENCY]
            waves, specs = await asyncio.to_thread(_chunks, native, group, chunking)
            pieces = await asyncio.gather(
                *(self.separation.chunk_speech(w, s) for w, s in zip(waves, specs, strict=True))
            )
            for start, piece in zip(group, pieces, strict=True):
                n = min(chunking.length, samples - start)
                speech[start : start + n] += (piece[:, :n] * fade[:n]).T.astype(np.float32)
        await asyncio.to_thread(_normalise, speech, chunking)


def _scratch(path: Path, shape: tuple[int, ...]) -> Scratch:
    """A zero-filled float32 file mapped [samples, C] (one row at least: mmap refuses empty)."""
    rows = max(1, shape[0])
    return np.memmap(path, np.float32, "w+", shape=(rows, *shape[1:]))[: shape[0]]


def _native(original: NDArray[Any], rate: int, channels: int, path: Path) -> Scratch:
    """The mix at 44.1 kHz in the model's channels (another count: its mean, duplicated)."""

    def layout(lo: int, hi: int) -> NDArray[np.float32]:
        block = np.asarray(original[lo:hi], np.float32)
        if block.shape[1] == channels:
            return block
        return np.repeat(block.mean(axis=1, keepdims=True), channels, axis=1)

    frames = original.shape[0]
    out = _scratch(path, (resampled_length(frames, rate, front.SAMPLE_RATE), channels))
    at = 0
    for block in resampled_blocks(layout, frames, rate, front.SAMPLE_RATE, BLOCK_SECONDS * rate):
        out[at : at + block.shape[0]] = block
        at += block.shape[0]
    return out


def _chunks(
    native: NDArray[np.float32], starts: list[int], chunking: front.Chunking
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    waves = np.stack([front.chunk_at(native.T, s, chunking) for s in starts])
    return waves, np.stack([front.spectrogram(w) for w in waves])


def _normalise(speech: Scratch, chunking: front.Chunking) -> None:
    samples = speech.shape[0]
    block = BLOCK_SECONDS * front.SAMPLE_RATE
    for lo in range(0, samples, block):
        hi = min(samples, lo + block)
        weight = np.maximum(chunk_weights(chunking, samples, lo, hi), 1e-12)
        speech[lo:hi] /= weight[:, None].astype(np.float32)


def _write_stems(
    original: NDArray[Any],
    rate: int,
    speech: Scratch,
    out_wav: Path,
    speech_wav: Path | None,
) -> tuple[float, float]:
    """``background = original - speech`` at the mix's rate into ``out_wav`` and the 16 kHz mono
    speech into ``speech_wav``, a block at a time; (speech energy, mix energy), both mono."""
    frames, channels = original.shape
    native = speech.shape[0]
    out = create_wav(out_wav, frames, channels, rate)
    at, speech_energy, mix_energy = 0, 0.0, 0.0
    block = BLOCK_SECONDS * front.SAMPLE_RATE
    for piece in resampled_blocks(lambda a, b: speech[a:b], native, front.SAMPLE_RATE, rate, block):
        piece = piece[: frames - at]
        mix = np.asarray(original[at : at + piece.shape[0]], np.float32)
        taken = piece if piece.shape[1] == channels else piece.mean(axis=1, keepdims=True)
        out[at : at + piece.shape[0]] = mix - taken
        speech_energy += float(np.sum(np.square(piece.mean(axis=1), dtype=np.float64)))
        mix_energy += float(np.sum(np.square(mix.mean(axis=1), dtype=np.float64)))
        at += piece.shape[0]
    if at < frames:  # the resampled speech came out a sample short: none there
        rest = np.asarray(original[at:], np.float32)
        out[at:] = rest
        mix_energy += float(np.sum(np.square(rest.mean(axis=1), dtype=np.float64)))
    out.flush()
    del out
    if speech_wav is not None:
        _write_speech16k(speech, speech_wav, resampled_length(frames, rate, SPEECH_RATE))
    return speech_energy, mix_energy


def _write_speech16k(speech: Scratch, speech_wav: Path, frames: int) -> None:
    """The speech's channel mean at 16 kHz, ``frames`` long (the mix's length at 16 kHz)."""
    out = create_wav(speech_wav, frames, 1, SPEECH_RATE)
    at = 0
    block = BLOCK_SECONDS * front.SAMPLE_RATE

    def mono(a: int, b: int) -> NDArray[np.float32]:
        return np.asarray(speech[a:b].mean(axis=1), np.float32)

    for piece in resampled_blocks(mono, speech.shape[0], front.SAMPLE_RATE, SPEECH_RATE, block):
        piece = piece[: frames - at]
        out[at : at + piece.shape[0], 0] = piece
        at += piece.shape[0]
    out.flush()
    del out


def _ratio_db(speech_energy: float, mix_energy: float) -> float | None:
    """As ``separation.speech_ratio_db``, from energies summed block by block."""
    if mix_energy <= 0.0:
        return None
    return round(10 * math.log10(max(speech_energy / mix_energy, 1e-12)), 2)
