"""Speech / background separation around the ``separation_htdemucs`` graph (Hybrid Transformer
Demucs): HT-Demucs's own STFT and inverse STFT, chunks and overlap-add, in numpy.

HT-Demucs has two branches: a spectrogram branch on the complex STFT stored as channels
("complex as channels": real and imaginary part of each audio channel) and a time branch on
the waveform. The graph (``polydub.export.htdemucs``) holds both branches and the cross
transformer between them; what the PyTorch model does around them lives here, with the
model's own parameters (``nfft`` 4096, hop 1024, its reflect padding and frame cropping,
``normalized=True``):

    waveform [B, C, LENGTH], spectrogram [B, 2C, NFFT/2, FRAMES]
        -> speech_spectrogram [B, 2C, NFFT/2, FRAMES], speech_waveform [B, C, LENGTH]

and the vocals (speech) stem of a chunk is ``istft(speech_spectrogram) + speech_waveform``,
exactly as ``HTDemucs.forward`` adds them. Chunks are the checkpoint's training segment (the
graph's fixed length; HT-Demucs pads shorter input to it anyway), one every ``length * 3/4``
samples (demucs's own overlap of 25 %), cross-faded with linear ramps; the last one is
zero-padded. Background is ``input - speech``: the stems sum back to the input exactly (to
float32 rounding), whatever the network does.

Audio is at the checkpoint's rate (44.1 kHz for every released HT-Demucs); mono input is
duplicated to the model's channels (as demucs's ``convert_audio`` does) and the speech stem
averaged back to mono. Resampling, where the caller's audio has another rate, is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.serving.separation import Stems

SAMPLE_RATE = 44100  # every released HT-Demucs checkpoint; the exporter refuses others
NFFT = 4096
HOP = NFFT // 4
BINS = NFFT // 2  # HT-Demucs drops the Nyquist bin
PAD = HOP // 2 * 3  # the model's own reflect padding before its STFT

Array = NDArray[np.float32]
# (waveforms [n, C, LENGTH], spectrograms [n, 2C, BINS, FRAMES]) -> (speech spectrograms,
# speech waveforms) of the same shapes: the graph, through Triton or onnxruntime.
SpeechFn = Callable[[Array, Array], tuple[Array, Array]]


def _window() -> NDArray[np.float64]:
    n = np.arange(NFFT)
    out: NDArray[np.float64] = 0.5 - 0.5 * np.cos(2 * np.pi * n / NFFT)  # torch.hann_window
    return out


WINDOW = _window()


@dataclass(frozen=True)
class Chunking:
    """One checkpoint's chunk: ``channels`` x ``length`` samples (its training segment)."""

    channels: int
    length: int

    @property
    def frames(self) -> int:
        return -(-self.length // HOP)

    @property
    def overlap(self) -> int:
        return self.length // 4

    @property
    def step(self) -> int:
        return self.length - self.overlap

    @classmethod
    def of_waveform(cls, dims: tuple[int, ...] | list[int]) -> Chunking:
        """From the graph's waveform input dims ``[batch, channels, length]`` (batch any)."""
        return cls(int(dims[-2]), int(dims[-1]))

    def fade(self) -> NDArray[np.float64]:
        i = np.arange(self.length)
        out: NDArray[np.float64] = np.minimum(
            1.0, np.minimum(i + 0.5, self.length - i - 0.5) / self.overlap
        )
        return out

    def starts(self, samples: int) -> list[int]:
        if samples <= 0:
            return []
        count = 1 + max(0, -(-(samples - self.length) // self.step))
        return [i * self.step for i in range(count)]


def spectrogram(chunk: NDArray[Any]) -> Array:
    """[2C, BINS, frames]: ``HTDemucs._spec`` then ``_magnitude`` (complex as channels) of a
    chunk [C, length]: reflect padding, centred normalised STFT, Nyquist bin and the two
    frames at each edge dropped."""
    x = np.asarray(chunk, np.float64)
    length = x.shape[-1]
    frames = -(-length // HOP)
    x = np.pad(x, ((0, 0), (PAD, PAD + frames * HOP - length)), mode="reflect")
    x = np.pad(x, ((0, 0), (NFFT // 2, NFFT // 2)), mode="reflect")  # stft(center=True)
    windows = np.lib.stride_tricks.sliding_window_view(x, NFFT, axis=-1)[:, ::HOP] * WINDOW
    spec = np.fft.rfft(windows, axis=-1)[:, 2 : 2 + frames, :BINS] / np.sqrt(NFFT)
    # [C, frames, BINS] -> [C, 2, BINS, frames] -> [2C, BINS, frames]
    cac = np.stack([spec.real, spec.imag], axis=1).transpose(0, 1, 3, 2)
    out: Array = cac.reshape(-1, BINS, frames).astype(np.float32)
    return out


def waveform(cac: NDArray[Any], length: int) -> NDArray[np.float64]:
    """``HTDemucs._ispec`` of a complex-as-channels spectrogram [2C, BINS, frames]: [C, length]."""
    z = np.asarray(cac, np.float64).reshape(-1, 2, BINS, cac.shape[-1])
    spec = (z[:, 0] + 1j * z[:, 1]).transpose(0, 2, 1)  # [C, frames, BINS]
    spec = np.pad(spec, ((0, 0), (2, 2), (0, 1)))  # the dropped edge frames and Nyquist bin
    count = spec.shape[1]
    frames = np.fft.irfft(spec * np.sqrt(NFFT), n=NFFT, axis=-1) * WINDOW
    total = np.zeros((spec.shape[0], NFFT + HOP * (count - 1)))
    envelope = np.zeros(total.shape[1])
    for t in range(count):
        total[:, t * HOP : t * HOP + NFFT] += frames[:, t]
        envelope[t * HOP : t * HOP + NFFT] += WINDOW**2
    start = NFFT // 2 + PAD  # istft(center=True) trims NFFT/2, then the model trims PAD
    out: NDArray[np.float64] = total[:, start : start + length] / envelope[start : start + length]
    return out


def chunk_at(audio: NDArray[Any], start: int, chunking: Chunking) -> Array:
    """[C, length] from ``audio`` [C, samples], zero-padded past its end."""
    piece = np.asarray(audio[:, start : start + chunking.length], np.float32)
    return np.pad(piece, ((0, 0), (0, chunking.length - piece.shape[1])))


def as_channels(audio: NDArray[Any], channels: int) -> Array:
    """[C, samples] of mono [samples] (duplicated) or [samples, C] audio."""
    x = np.asarray(audio, np.float32)
    if x.ndim == 1:
        return np.repeat(x[None], channels, axis=0)
    if x.shape[1] != channels:
        raise ValueError(f"audio has {x.shape[1]} channels, the model {channels}")
    return np.ascontiguousarray(x.T)


def batches(
    audio: NDArray[Any], chunking: Chunking, size: int
) -> Iterator[tuple[list[int], Array, Array]]:
    """(starts, waveforms [n, C, length], spectrograms [n, 2C, BINS, frames]), ``size`` chunks
    at a time, of ``audio`` [C, samples]: memory stays bounded by the batch."""
    starts = chunking.starts(audio.shape[1])
    for i in range(0, len(starts), size):
        group = starts[i : i + size]
        waves = np.stack([chunk_at(audio, s, chunking) for s in group])
        yield group, waves, np.stack([spectrogram(w) for w in waves])


def speech_of(spec: NDArray[Any], wave: NDArray[Any], length: int) -> NDArray[np.float64]:
    """One chunk's speech stem [C, length] from the graph's two outputs."""
    return waveform(spec, length) + np.asarray(wave, np.float64)


class OverlapAdd:
    """Speech of cross-faded chunks [C, length], added in any order, for ``samples`` samples."""

    def __init__(self, chunking: Chunking, samples: int) -> None:
        self.chunking = chunking
        self.fade = chunking.fade()
        self.total = np.zeros((chunking.channels, samples))
        self.weight = np.zeros(samples)

    def add(self, start: int, piece: NDArray[np.float64]) -> None:
        n = min(self.chunking.length, self.weight.size - start)
        self.total[:, start : start + n] += piece[:, :n] * self.fade[:n]
        self.weight[start : start + n] += self.fade[:n]

    def speech(self) -> NDArray[np.float64]:
        out: NDArray[np.float64] = self.total / np.maximum(self.weight, 1e-12)
        return out


def stems(audio: NDArray[Any], speech: NDArray[np.float64]) -> Stems:
    """Stems in ``audio``'s layout (mono [samples] or [samples, C]) from speech [C, samples]:
    background = audio - speech, so they sum back to it."""
    x = np.asarray(audio, np.float32)
    estimate = speech.mean(axis=0) if x.ndim == 1 else speech.T
    speech32 = estimate.astype(np.float32)
    return Stems(speech32, (x - speech32).astype(np.float32))


def separate(audio: NDArray[Any], fn: SpeechFn, chunking: Chunking, *, batch: int = 4) -> Stems:
    """Speech and background of ``audio`` (44.1 kHz, mono or [samples, C]) through ``fn``."""
    channels = as_channels(audio, chunking.channels)
    result = OverlapAdd(chunking, channels.shape[1])
    for starts, waves, specs in batches(channels, chunking, batch):
        speech_specs, speech_waves = fn(waves, specs)
        for start, spec, wave in zip(starts, speech_specs, speech_waves, strict=True):
            result.add(start, speech_of(spec, wave, chunking.length))
    return stems(audio, result.speech())
