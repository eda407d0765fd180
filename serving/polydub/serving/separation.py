"""Speech / background separation around the ``separation`` graph: STFT, chunks, overlap-add.

The graph is a spectrogram-mask network: it reads the STFT of one fixed-length chunk of 16 kHz
mono audio and returns a speech mask in [0, 1] per time-frequency bin. Everything else lives
here, in numpy, beside the graph (the same code serves the orchestrator's Triton client, the
in-process onnxruntime path of the benchmark, and the tests):

* chunks of ``CHUNK`` samples (6 s) every ``STEP`` samples (1 s of overlap), the last one
  zero-padded: every request has the same shape, so Triton batches chunks of different jobs;
* per chunk a Hann-windowed STFT (``N_FFT`` 1024, ``HOP`` 256, reflect-padded), the mask applied
  to the complex spectrum, and the inverse STFT by weighted overlap-add divided by the windows'
  actual sum of squares (exact reconstruction at the chunk's edges too);
* chunks cross-faded (linear ramps over the overlap) and divided by the summed fade weights.

Mixture consistency is exact by construction: the graph estimates speech only and
``background = input - speech``, so the two stems sum back to the input up to float32 rounding
(checked at chunk boundaries in the tests, tolerance ``CONSISTENCY_ATOL``), whatever the mask.
With a mask of ones, speech reconstructs the input within ``CONSISTENCY_ATOL`` as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 256
BINS = N_FFT // 2 + 1
CHUNK = 6 * SAMPLE_RATE  # a multiple of HOP
OVERLAP = SAMPLE_RATE
STEP = CHUNK - OVERLAP
FRAMES = 1 + CHUNK // HOP
CONSISTENCY_ATOL = 1e-5  # |speech + background - input|, full-scale float32 audio

Array = NDArray[np.float32]
# A batch of spectrograms [n, 2, FRAMES, BINS] -> their speech masks [n, FRAMES, BINS].
MaskFn = Callable[[Array], Array]


@dataclass(frozen=True)
class Stems:
    speech: Array
    background: Array


def _window() -> NDArray[np.float64]:
    n = np.arange(N_FFT)
    out: NDArray[np.float64] = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann
    return out


def _norm() -> NDArray[np.float64]:
    """The windows' overlapped sum of squares over a padded chunk (what the iSTFT divides by)."""
    total = np.zeros(CHUNK + N_FFT)
    square = _window() ** 2
    for t in range(FRAMES):
        total[t * HOP : t * HOP + N_FFT] += square
    return total[N_FFT // 2 : N_FFT // 2 + CHUNK]


WINDOW = _window()
NORM = _norm()
FADE: NDArray[np.float64] = np.minimum(
    1.0, np.minimum(np.arange(CHUNK) + 0.5, CHUNK - np.arange(CHUNK) - 0.5) / OVERLAP
)


def chunk_starts(length: int) -> list[int]:
    """Where each chunk of a signal of ``length`` samples starts (none for an empty one)."""
    if length <= 0:
        return []
    count = 1 + max(0, -(-(length - CHUNK) // STEP))
    return [i * STEP for i in range(count)]


def chunk_at(audio: NDArray[Any], start: int) -> Array:
    piece = np.asarray(audio[start : start + CHUNK], np.float32)
    return np.pad(piece, (0, CHUNK - piece.size))


def spectrogram(chunk: Array) -> Array:
    """[2, FRAMES, BINS]: real and imaginary parts of the chunk's STFT."""
    padded = np.pad(chunk.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP] * WINDOW
    spec = np.fft.rfft(frames, axis=1)
    return np.stack([spec.real, spec.imag]).astype(np.float32)


def masked_waveform(spec: Array, mask: Array) -> NDArray[np.float64]:
    """The chunk's waveform of ``mask`` * spectrum (inverse STFT, weighted overlap-add)."""
    complex_spec = (spec[0].astype(np.float64) + 1j * spec[1]) * mask
    frames = np.fft.irfft(complex_spec, n=N_FFT, axis=1) * WINDOW
    total = np.zeros(CHUNK + N_FFT)
    for t in range(frames.shape[0]):
        total[t * HOP : t * HOP + N_FFT] += frames[t]
    out: NDArray[np.float64] = total[N_FFT // 2 : N_FFT // 2 + CHUNK] / NORM
    return out


class OverlapAdd:
    """Speech of cross-faded chunks, added as they come (any order), for ``length`` samples."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.total = np.zeros(length)
        self.weight = np.zeros(length)

    def add(self, start: int, piece: NDArray[np.float64]) -> None:
        n = min(CHUNK, self.length - start)
        self.total[start : start + n] += piece[:n] * FADE[:n]
        self.weight[start : start + n] += FADE[:n]

    def stems(self, audio: NDArray[Any]) -> Stems:
        speech = (self.total / np.maximum(self.weight, 1e-12)).astype(np.float32)
        background = (np.asarray(audio, np.float32) - speech).astype(np.float32)
        return Stems(speech, background)


def batches(audio: NDArray[Any], size: int) -> Iterator[tuple[list[int], Array]]:
    """(starts, spectrograms [n, 2, FRAMES, BINS]) for ``size`` chunks at a time: memory stays
    bounded by the batch, whatever the audio's length."""
    starts = chunk_starts(len(audio))
    for i in range(0, len(starts), size):
        group = starts[i : i + size]
        yield group, np.stack([spectrogram(chunk_at(audio, s)) for s in group])


def separate(audio: NDArray[Any], mask_fn: MaskFn, *, batch: int = 8) -> Stems:
    """Speech and background of 16 kHz mono ``audio``, through ``mask_fn`` (e.g. onnxruntime)."""
    result = OverlapAdd(len(audio))
    for starts, specs in batches(audio, batch):
        masks = mask_fn(specs)
        for start, spec, mask in zip(starts, specs, masks, strict=True):
            result.add(start, masked_waveform(spec, mask))
    return result.stems(audio)
