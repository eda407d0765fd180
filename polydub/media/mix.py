"""Assemble the dubbed speech on the timeline and mix it over the original background.

* ``render_segment`` turns one synthesized segment into exactly what its ``SegmentTiming`` plans:
  residual stretch, per-speaker pitch shift, resampling to the mix rate, and truncation with a
  fade-out where it overflows.
* ``assemble`` places segments sample-accurately at their original starts (a full speech track).
* ``mix_to_wav`` streams the background WAV in chunks (memory-mapped, so an hour of 48 kHz stereo
  never sits in memory), ducks it under the dub with a gain envelope (``duck_db`` with an attack
  ramp before speech and a release after, short gaps bridged so it does not pump), adds the
  speech, normalises the result to EBU R128 (integrated loudness to ``target_lufs`` with a linear
  gain, capped so the true peak stays under ``max_true_peak``), and counts clipped samples. The
  loudness is measured once: the delivered one is the measured one moved by the gain
  (``shifted_loudness``), measured again only where clipping or the absolute gate forbid that.
* Source separation hook: a ``BackgroundSeparator`` (e.g. a model served by Triton) writes a
  background stem without speech; ``background_track`` uses it when given, and ``mix_to_wav``
  then barely ducks (``separated_duck_db``) instead of hiding the original voices under the dub.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .pcm import create_wav, read_wav
from .runner import file_input, run_ffmpeg
from .stretch import fit_length, stretch


class TimedSegment(Protocol):
    """What rendering and ducking read of a segment's timing plan. The orchestrator's
    ``timing.SegmentTiming`` is one; a Protocol keeps this core package free of the worker tier."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def stretch(self) -> float: ...
    @property
    def dubbed_duration(self) -> float: ...
    @property
    def dubbed_end(self) -> float: ...


@dataclass(frozen=True)
class Placement:
    start: float  # seconds on the timeline (the segment's original start)
    samples: NDArray[np.float32]  # mono, at the mix sample rate


@dataclass(frozen=True)
class MixPolicy:
    duck_db: float = -15.0  # the original under dubbed speech
    separated_duck_db: float = -3.0  # a separated background stem (it holds no speech)
    attack: float = 0.08  # ramp down this long before speech starts
    release: float = 0.3  # ramp back up this long after it ends
    bridge_gap: float = 0.6  # gaps shorter than this stay ducked: no pumping between phrases
    speech_gain_db: float = 0.0
    target_lufs: float = -23.0  # EBU R128 broadcast; web delivery often uses -16
    max_true_peak: float = -1.0  # dBTP
    chunk_seconds: float = 30.0


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float  # -70.0 or lower means silence (below the absolute gate)
    true_peak_dbtp: float  # -inf for digital silence
    lra: float


@dataclass(frozen=True)
class MixResult:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    measured: Loudness  # before normalisation
    loudness: Loudness  # of the delivered mix
    gain_db: float  # normalisation gain applied
    clipped_samples: int  # samples beyond full scale after normalisation (then clipped)
    ducked_seconds: float
    separated: bool

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


class BackgroundSeparator(Protocol):
    """A source-separation model (e.g. served by Triton): the background stem of a mix, same
    length, rate and channels, written as a float WAV."""

    async def separate(self, mix_wav: Path, out_wav: Path) -> Path: ...


async def background_track(
    original_wav: Path, out_wav: Path, separator: BackgroundSeparator | None
) -> tuple[Path, bool]:
    """The background to mix under the dub, and whether it is a separated stem."""
    if separator is None:
        return original_wav, False
    return await separator.separate(original_wav, out_wav), True


def render_segment(
    samples: NDArray[np.float32],
    sample_rate: int,
    timing: TimedSegment,
    *,
    semitones: float = 0.0,
    out_rate: int = 48000,
    fade_seconds: float = 0.05,
) -> NDArray[np.float32]:
    """One segment's speech, stretched and pitch-shifted, exactly ``dubbed_duration`` long."""
    shaped = stretch(
        samples,
        sample_rate,
        tempo=timing.stretch,
        semitones=semitones,
        out_rate=out_rate,
        max_tempo=max(timing.stretch, 1.0),
    )
    frames = round(timing.dubbed_duration * out_rate)
    return fit_length(shaped.samples, frames, out_rate, fade_seconds)


def render_segments(
    audio: Sequence[NDArray[np.float32]],
    sample_rate: int,
    timings: Sequence[TimedSegment],
    semitones: Sequence[float],
    *,
    out_rate: int = 48000,
    fade_seconds: float = 0.05,
    gap_seconds: float = 0.25,
) -> list[NDArray[np.float32]]:
    """``render_segment`` for many segments with few ffmpeg runs: each segment that needs a
    residual stretch is stretched alone; then the segments of one pitch shift (one speaker) are
    joined with ``gap_seconds`` of silence, shifted and resampled in one run, and cut apart
    again (a pitch shift keeps every sample position, so the cuts are exact)."""
    if not len(audio) == len(timings) == len(semitones):
        raise ValueError("audio, timings and semitones must have the same length")
    tempo_fixed: list[NDArray[np.float32]] = []
    for samples, timing in zip(audio, timings, strict=True):
        mono = np.asarray(samples, np.float32).reshape(-1)
        if timing.stretch != 1.0:
            mono = stretch(
                mono, sample_rate, tempo=timing.stretch, max_tempo=timing.stretch
            ).samples
        tempo_fixed.append(mono)
    groups: dict[float, list[int]] = {}
    for i, shift in enumerate(semitones):
        groups.setdefault(float(shift), []).append(i)
    rendered: list[NDArray[np.float32]] = [np.zeros(0, np.float32)] * len(audio)
    gap = np.zeros(round(gap_seconds * sample_rate), np.float32)
    ratio = out_rate / sample_rate
    for shift, members in groups.items():
        offsets, parts, position = [], [], 0
        for i in members:
            offsets.append(position)
            parts += [tempo_fixed[i], gap]
            position += len(tempo_fixed[i]) + len(gap)
        shaped = stretch(np.concatenate(parts), sample_rate, semitones=shift, out_rate=out_rate)
        for i, offset in zip(members, offsets, strict=True):
            begin = round(offset * ratio)
            piece = shaped.samples[begin : begin + round(len(tempo_fixed[i]) * ratio)]
            frames = round(timings[i].dubbed_duration * out_rate)
            rendered[i] = fit_length(piece, frames, out_rate, fade_seconds)
    return rendered


def assemble(
    placements: Iterable[Placement], total_frames: int, sample_rate: int
) -> NDArray[np.float32]:
    """A mono speech track: every placement added at ``round(start * rate)``, cut at the end."""
    track = np.zeros(total_frames, np.float32)
    for p in placements:
        _add(track, 0, p, sample_rate)
    return track


def _add(chunk: NDArray[np.float32], offset: int, p: Placement, sample_rate: int) -> None:
    """Add the part of placement ``p`` that overlaps ``chunk`` (which starts at frame ``offset``)."""
    begin = round(p.start * sample_rate)
    lo = max(begin, offset)
    hi = min(begin + len(p.samples), offset + len(chunk))
    if hi > lo:
        chunk[lo - offset : hi - offset] += p.samples[lo - begin : hi - begin]


def speech_intervals(timings: Iterable[TimedSegment]) -> list[tuple[float, float]]:
    """Where to duck: the original speech and the dub over it, ``[start, max(end, dubbed_end))``."""
    return [(t.start, max(t.end, t.dubbed_end)) for t in timings]


def merge_intervals(
    intervals: Iterable[tuple[float, float]], bridge_gap: float
) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start - merged[-1][1] < bridge_gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def duck_envelope(
    offset: int,
    frames: int,
    sample_rate: int,
    intervals: Sequence[tuple[float, float]],
    depth_db: float,
    policy: MixPolicy,
) -> NDArray[np.float32]:
    """Gain per frame for ``[offset, offset + frames)``: 1.0 away from speech, ``depth_db`` under
    it, ramped linearly in dB over ``attack`` before and ``release`` after each interval."""
    t = (offset + np.arange(frames, dtype=np.float64)) / sample_rate
    depth = np.zeros(frames, np.float64)
    first, last = t[0] if frames else 0.0, t[-1] if frames else 0.0
    for start, end in intervals:
        if end + policy.release < first or start - policy.attack > last:
            continue
        xp = [start - policy.attack, start, end, end + policy.release]
        np.maximum(depth, np.interp(t, xp, [0.0, 1.0, 1.0, 0.0], left=0.0, right=0.0), out=depth)
    return (10.0 ** (depth_db * depth / 20.0)).astype(np.float32)


def mix_to_wav(
    background_wav: str | os.PathLike[str],
    placements: Sequence[Placement],
    out_wav: str | os.PathLike[str],
    *,
    intervals: Iterable[tuple[float, float]],
    separated: bool = False,
    policy: MixPolicy = MixPolicy(),
    gain_db: float | None = None,
) -> MixResult:
    """Duck ``background_wav`` under ``intervals``, add the speech, normalise; a float WAV as long
    as the background, with its rate and channels (speech is added to every channel).
    ``gain_db`` replaces the measured normalisation gain: a re-render keeps its first render's,
    so what it did not change stays sample for sample as it was."""
    background, rate = read_wav(background_wav, mmap=True)
    frames, channels = background.shape
    out = create_wav(out_wav, frames, channels, rate)
    merged = merge_intervals(intervals, policy.bridge_gap)
    depth = policy.separated_duck_db if separated else policy.duck_db
    speech_gain = 10.0 ** (policy.speech_gain_db / 20.0)
    chunk = max(1, round(policy.chunk_seconds * rate))
    ordered = sorted(placements, key=lambda p: p.start)
    for offset in range(0, frames, chunk):
        n = min(chunk, frames - offset)
        gain = duck_envelope(offset, n, rate, merged, depth, policy)
        speech = np.zeros(n, np.float32)
        for p in ordered:
            _add(speech, offset, p, rate)
        out[offset : offset + n] = (
            background[offset : offset + n] * gain[:, None] + (speech * speech_gain)[:, None]
        )
    out.flush()
    measured, levels = _measure(out_wav, duration=frames / rate)
    if gain_db is None:
        gain_db = normalisation_gain(measured, policy.target_lufs, policy.max_true_peak)
    clipped = 0
    factor = np.float32(10.0 ** (gain_db / 20.0))
    for offset in range(0, frames, chunk):
        block = out[offset : offset + chunk] * factor
        clipped += int(np.count_nonzero(np.abs(block) > 1.0))
        out[offset : offset + chunk] = np.clip(block, -1.0, 1.0)
    out.flush()
    del out
    # The delivered loudness follows from the first measurement where a gain is all that changed.
    final = measured
    if gain_db:
        shifted = None if clipped else shifted_loudness(measured, levels, gain_db)
        final = shifted or measure_loudness(out_wav, duration=frames / rate)
    ducked = sum(e - s for s, e in merged)
    return MixResult(Path(out_wav), rate, channels, frames, measured, final, gain_db, clipped,
                     ducked, separated)  # fmt: skip


def normalisation_gain(measured: Loudness, target_lufs: float, max_true_peak: float) -> float:
    """The linear gain (dB) to reach ``target_lufs``, capped so the true peak stays at or under
    ``max_true_peak``; 0 for silence. Rounded to 0.01 dB."""
    if measured.integrated_lufs <= -70.0 or not np.isfinite(measured.true_peak_dbtp):
        return 0.0
    gain = target_lufs - measured.integrated_lufs
    gain = min(gain, max_true_peak - measured.true_peak_dbtp)
    return round(gain, 2)


def shifted_loudness(
    measured: Loudness, levels: Sequence[float], gain_db: float
) -> Loudness | None:
    """The loudness after a linear gain of ``gain_db`` without measuring again, or None where that
    cannot be known exactly. Integrated loudness and true peak move by the gain and the loudness
    range not at all, unless a 400 ms or 3 s block crosses BS.1770's absolute gate (-70 LUFS):
    the relative gates move with the gain. ``levels`` are the measurement's block loudnesses,
    printed to 0.1 LU, hence the margin. Clipping breaks linearity: the caller measures then.
    Silence (nothing over the gate: ebur128 reports its floor, -70) is measured again too."""
    low, high = sorted((_ABSOLUTE_GATE, _ABSOLUTE_GATE - gain_db))
    if measured.integrated_lufs <= _ABSOLUTE_GATE or any(
        low - 0.1 <= level <= high + 0.1 for level in levels
    ):
        return None
    return Loudness(
        round(measured.integrated_lufs + gain_db, 2),
        round(measured.true_peak_dbtp + gain_db, 2),
        measured.lra,
    )


_ABSOLUTE_GATE = -70.0  # LUFS (ITU-R BS.1770-4, EBU Tech 3342)
# One line per 100 ms frame at loglevel verbose: its momentary (M, 400 ms) and short-term (S, 3 s)
# loudness, the blocks that the integrated loudness and the loudness range gate.
_FRAME = re.compile(r"\bM:\s*(?P<m>-?[\d.]+|-?inf|nan)\s+S:\s*(?P<s>-?[\d.]+|-?inf|nan)")
_SUMMARY = re.compile(
    r"Integrated loudness:\s*I:\s*(?P<i>-?[\d.]+|-?inf)\s*LUFS.*?"
    r"LRA:\s*(?P<lra>-?[\d.]+|-?inf)\s*LU.*?"
    r"Peak:\s*(?P<tp>-?[\d.]+|-?inf)\s*dBFS",
    re.S,
)


def measure_loudness(path: str | os.PathLike[str], *, duration: float = 3600.0) -> Loudness:
    """EBU R128 / ITU-R BS.1770 integrated loudness, loudness range and true peak (ffmpeg
    ``ebur128``, 4x oversampled true peak) of an audio file."""
    return _measure(path, duration=duration, frames=False)[0]


def _measure(
    path: str | os.PathLike[str], *, duration: float = 3600.0, frames: bool = True
) -> tuple[Loudness, list[float]]:
    """The loudness and, with ``frames``, every frame's M and S block loudness (LUFS)."""
    # The summary is logged at info, the per-frame lines (framelog=verbose) at verbose.
    # The null muxer's default codec is 16-bit PCM; float skips a conversion nobody reads.
    run = run_ffmpeg(
        [*file_input(path, user_media=False), "-map", "0:a:0",
         "-af", "ebur128=peak=true:framelog=verbose", "-c:a", "pcm_f32le", "-f", "null", "-"],
        timeout=60.0 + 0.2 * duration,
        blame="internal",
        what="measure loudness",
        loglevel="verbose" if frames else "info",
    )  # fmt: skip
    found = list(_SUMMARY.finditer(run.stderr))
    if not found:
        raise ValueError("no loudness summary in ffmpeg output")
    m = found[-1]
    levels = [float(v) for f in _FRAME.finditer(run.stderr) for v in (f["m"], f["s"])]
    return Loudness(float(m["i"]), float(m["tp"]), float(m["lra"])), levels
