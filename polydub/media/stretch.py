"""Pitch-preserving time-stretch and formant-preserving pitch shift of synthesized speech.

Engine: ffmpeg's ``rubberband`` filter where the build has it (Debian's does): tempo and pitch
in one pass, ``formant=preserved`` so a shifted voice keeps its vocal-tract colour (it sounds like
a higher or lower voice of the same person, not a chipmunk), ``pitchq=quality``.

Fallback without rubberband: ``atempo`` (WSOLA, pitch-preserving) for tempo, and for pitch
``asetrate`` + ``aresample`` + ``atempo``, which is NOT formant-preserving: formants move with the
pitch, so shifts beyond a few semitones sound cartoonish. ``Stretched.formant_preserved`` says
which one ran.

Output lengths are made exact: ``round(frames / tempo * out_rate / rate)`` samples, so the
timeline places every segment sample-accurately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .pcm import as_2d
from .runner import has_filter, pcm_input, pcm_output, run_ffmpeg

DEFAULT_MAX_TEMPO = 1.3
MAX_SEMITONES = 12.0


@dataclass(frozen=True)
class Stretched:
    samples: NDArray[np.float32]  # same layout as the input: (frames,) or (frames, channels)
    sample_rate: int
    tempo: float  # applied: > 1 is faster (shorter); duration_out = duration_in / tempo
    semitones: float  # applied pitch shift
    engine: str  # "rubberband", "atempo" or "none"
    formant_preserved: bool

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def bounded_tempo(tempo: float, max_tempo: float = DEFAULT_MAX_TEMPO) -> float:
    """Clamp a tempo factor into [1/max_tempo, max_tempo]."""
    if tempo <= 0 or not math.isfinite(tempo):
        raise ValueError(f"tempo must be a positive number, got {tempo}")
    if max_tempo < 1:
        raise ValueError("max_tempo must be >= 1")
    return min(max(tempo, 1.0 / max_tempo), max_tempo)


def tempo_to_fit(duration: float, target: float, max_tempo: float = DEFAULT_MAX_TEMPO) -> float:
    """The bounded tempo that brings ``duration`` to ``target`` seconds (1.0 if it already fits)."""
    if duration <= 0 or target <= 0:
        return 1.0
    return bounded_tempo(duration / target, max_tempo) if duration > target else 1.0


def stretch(
    samples: NDArray[Any],
    sample_rate: int,
    *,
    tempo: float = 1.0,
    semitones: float = 0.0,
    out_rate: int | None = None,
    max_tempo: float = DEFAULT_MAX_TEMPO,
    engine: str | None = None,
) -> Stretched:
    """Change tempo (bounded by ``max_tempo`` either way) and pitch; optionally resample."""
    tempo = bounded_tempo(tempo, max_tempo)
    semitones = max(-MAX_SEMITONES, min(MAX_SEMITONES, semitones))
    out_rate = out_rate or sample_rate
    data = as_2d(samples)
    frames, channels = data.shape
    expected = round(frames / tempo * out_rate / sample_rate)
    chosen = engine or ("rubberband" if has_filter("rubberband") else "atempo")
    if (tempo == 1.0 and semitones == 0.0 and out_rate == sample_rate) or frames == 0:
        out = np.zeros((expected, channels), np.float32) if frames == 0 else data.copy()
        return _result(out, samples, out_rate, tempo, semitones, "none", True)
    filters: list[str] = []
    pitch = 2.0 ** (semitones / 12.0)
    if tempo != 1.0 or semitones != 0.0:
        if chosen == "rubberband":
            filters.append(
                f"rubberband=tempo={tempo:.6f}:pitch={pitch:.6f}"
                ":formant=preserved:pitchq=quality:transients=mixed"
            )
        elif chosen == "atempo":
            if semitones != 0.0:
                # Raise the rate (pitch and speed up), resample back, then undo the speed-up.
                filters += [f"asetrate={sample_rate * pitch:.3f}", f"aresample={sample_rate}"]
            filters += _atempo_chain(tempo / pitch)
        else:
            raise ValueError(f"unknown stretch engine {chosen!r}")
    if out_rate != sample_rate:
        filters.append(f"aresample={out_rate}")
    run = run_ffmpeg(
        [*pcm_input(sample_rate, channels), "-af", ",".join(filters),
         *pcm_output(out_rate, channels)],
        stdin=np.ascontiguousarray(data, dtype="<f4").tobytes(),
        timeout=60.0 + frames / sample_rate,
        blame="internal",
        what="time-stretch",
    )  # fmt: skip
    out = np.frombuffer(run.stdout, dtype="<f4").reshape(-1, channels).astype(np.float32)
    used = chosen if tempo != 1.0 or semitones != 0.0 else "none"
    formant = used != "atempo" or semitones == 0.0
    return _result(_exact(out, expected), samples, out_rate, tempo, semitones, used, formant)


def _atempo_chain(tempo: float) -> list[str]:
    # atempo takes 0.5..100 per instance; chain halvings for slower factors.
    parts: list[str] = []
    while tempo < 0.5:
        parts.append("atempo=0.5")
        tempo /= 0.5
    parts.append(f"atempo={tempo:.6f}")
    return parts


def _exact(data: NDArray[np.float32], frames: int) -> NDArray[np.float32]:
    if len(data) >= frames:
        return data[:frames]
    pad = np.zeros((frames - len(data), data.shape[1]), np.float32)
    return np.concatenate([data, pad])


def _result(
    out: NDArray[np.float32],
    like: NDArray[Any],
    rate: int,
    tempo: float,
    semitones: float,
    engine: str,
    formant: bool,
) -> Stretched:
    samples = out[:, 0].copy() if np.asarray(like).ndim == 1 else out
    return Stretched(samples, rate, tempo, semitones, engine, formant)


def fade_out(samples: NDArray[np.float32], sample_rate: int, seconds: float) -> NDArray[np.float32]:
    """A linear fade to silence over the last ``seconds`` (a copy)."""
    out = np.array(samples, dtype=np.float32, copy=True)
    n = min(len(out), round(seconds * sample_rate))
    if n > 0:
        ramp = np.linspace(1.0, 0.0, n, dtype=np.float32)
        out[-n:] = out[-n:] * (ramp if out.ndim == 1 else ramp[:, None])
    return out


def fit_length(
    samples: NDArray[np.float32], frames: int, sample_rate: int, fade_seconds: float = 0.05
) -> NDArray[np.float32]:
    """Exactly ``frames`` long: pad with silence, or truncate with a fade-out (no click)."""
    if len(samples) > frames:
        return fade_out(samples[:frames], sample_rate, fade_seconds)
    if len(samples) == frames:
        return np.asarray(samples, dtype=np.float32)
    pad_shape = (frames - len(samples), *np.shape(samples)[1:])
    return np.concatenate([np.asarray(samples, np.float32), np.zeros(pad_shape, np.float32)])
