"""Give each speaker one recognisable voice (pure logic, plus a small pitch estimator).

Where the target language has several voices, each speaker gets a distinct one of its gender,
nearest in pitch; speakers are served in the order given (pass them by speaking time, most first,
so the main speakers get the best matches). Gender match beats distinctness: two men share the
male voice rather than one of them getting a woman's.

Where speakers share a voice (most MMS-TTS languages have exactly one), each gets a pitch shift
(applied formant-preserving by ``media.stretch``) from the voice's own median F0 toward the
speaker's measured one, bounded to ``max_shift`` semitones, with the target first clamped into
the speaker's gender range (so the result stays gender-plausible); then the shifts of speakers
sharing a voice are moved apart to at least ``min_separation`` semitones with the least total
(squared) movement, keeping their order, and slid back inside ``+-max_shift`` as a group.
A voice used by one speaker of a many-voice language is left unshifted: it was chosen for its
pitch, and every shift costs some naturalness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Gender = Literal["male", "female", "unknown"]


@dataclass(frozen=True)
class SpeakerProfile:
    speaker: str
    gender: Gender
    median_f0: float | None  # Hz; None when too little voiced speech was measured


@dataclass(frozen=True)
class Voice:
    id: str  # e.g. the TTS model name, with a speaker id for multi-speaker models
    gender: Gender
    median_f0: float  # Hz, measured on the voice's own output


@dataclass(frozen=True)
class VoicePolicy:
    max_shift: float = 6.0  # semitones either way
    min_separation: float = 2.0  # semitones between speakers that share a voice
    f0_range: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"male": (85.0, 165.0), "female": (155.0, 275.0)}
    )
    typical_f0: dict[str, float] = field(default_factory=lambda: {"male": 120.0, "female": 210.0})


@dataclass(frozen=True)
class VoiceAssignment:
    speaker: str
    voice: str
    semitones: float  # pitch shift applied to the voice
    f0: float  # the voice's F0 after the shift, Hz
    shared: bool  # another speaker uses the same voice
    separated: bool  # every other speaker on this voice is at least min_separation away


def semitones_between(f_from: float, f_to: float) -> float:
    return 12.0 * math.log2(f_to / f_from)


def cast_voices(
    speakers: Sequence[SpeakerProfile],
    voices: Sequence[Voice],
    policy: VoicePolicy = VoicePolicy(),
) -> list[VoiceAssignment]:
    """One assignment per speaker, in the order given."""
    if not voices:
        raise ValueError("the language has no voice")
    if len({s.speaker for s in speakers}) != len(speakers):
        raise ValueError("speaker ids must be unique")
    targets = [_target_f0(s, policy) for s in speakers]
    chosen: list[Voice] = []
    used: set[str] = set()
    for speaker, target in zip(speakers, targets, strict=True):
        voice = min(
            voices,
            key=lambda v: (
                _mismatch(speaker.gender, v.gender),
                v.id in used,
                abs(semitones_between(v.median_f0, target)) if target else 0.0,
                v.id,
            ),
        )
        chosen.append(voice)
        used.add(voice.id)
    shifts = [0.0] * len(speakers)
    separated = [True] * len(speakers)
    for voice in {v.id: v for v in chosen}.values():
        members = [i for i, v in enumerate(chosen) if v.id == voice.id]
        if len(members) == 1 and len(voices) > 1:
            continue
        wanted = [
            _clamp(semitones_between(voice.median_f0, t), policy.max_shift) if t else 0.0
            for t in (targets[i] for i in members)
        ]
        placed, ok = separate(wanted, policy.min_separation, policy.max_shift)
        for i, value in zip(members, placed, strict=True):
            shifts[i] = round(value, 2)
            separated[i] = ok
    return [
        VoiceAssignment(
            speaker=s.speaker,
            voice=v.id,
            semitones=shifts[i],
            f0=round(v.median_f0 * 2.0 ** (shifts[i] / 12.0), 1),
            shared=sum(c.id == v.id for c in chosen) > 1,
            separated=separated[i],
        )
        for i, (s, v) in enumerate(zip(speakers, chosen, strict=True))
    ]


def _mismatch(speaker: Gender, voice: Gender) -> int:
    return int(speaker != "unknown" and voice != "unknown" and speaker != voice)


def _target_f0(speaker: SpeakerProfile, policy: VoicePolicy) -> float | None:
    f0 = speaker.median_f0 if speaker.median_f0 and speaker.median_f0 > 0 else None
    if f0 is None:
        return policy.typical_f0.get(speaker.gender)
    if speaker.gender in policy.f0_range:
        low, high = policy.f0_range[speaker.gender]
        f0 = min(max(f0, low), high)
    return f0


def _clamp(value: float, bound: float) -> float:
    return min(max(value, -bound), bound)


def separate(wanted: Sequence[float], gap: float, bound: float) -> tuple[list[float], bool]:
    """Values as close as possible (least squares) to ``wanted``, in the same order, at least
    ``gap`` apart, inside ``[-bound, bound]``; the flag is False when that interval is too narrow.
    """
    order = sorted(range(len(wanted)), key=lambda i: (wanted[i], i))
    # With y_k = x_k - k*gap the spacing becomes "y non-decreasing": an isotonic regression.
    z = [wanted[i] - k * gap for k, i in enumerate(order)]
    fitted = _isotonic(z)
    x = [y + k * gap for k, y in enumerate(fitted)]
    ok = True
    if x and x[-1] - x[0] > 2 * bound + 1e-9:
        ok = False
        x = [_clamp(v, bound) for v in x]
    elif x:
        shift = max(0.0, x[-1] - bound) - max(0.0, -bound - x[0])
        x = [v - shift for v in x]
    result = [0.0] * len(wanted)
    for k, i in enumerate(order):
        result[i] = x[k]
    return result, ok


def _isotonic(values: Sequence[float]) -> list[float]:
    """Pool-adjacent-violators: the non-decreasing sequence nearest ``values`` (least squares)."""
    blocks: list[tuple[float, int]] = []  # (mean, count)
    for v in values:
        mean, count = v, 1
        while blocks and blocks[-1][0] > mean:
            m, c = blocks.pop()
            mean, count = (m * c + mean * count) / (c + count), c + count
        blocks.append((mean, count))
    return [m for m, c in blocks for _ in range(c)]


def estimate_f0(
    samples: NDArray[np.float32],
    sample_rate: int,
    *,
    fmin: float = 60.0,
    fmax: float = 400.0,
    threshold: float = 0.15,
) -> float | None:
    """Median F0 (Hz) of the voiced frames of mono speech (YIN: cumulative mean normalised
    difference, first dip under ``threshold``, parabolic refinement); None if under 5 voiced
    frames."""
    x = np.asarray(samples, np.float64).reshape(-1)
    window = round(0.03 * sample_rate)
    hop = round(0.01 * sample_rate)
    min_lag = max(2, int(sample_rate / fmax))
    max_lag = math.ceil(sample_rate / fmin)
    span = window + max_lag + 1
    if len(x) < span:
        return None
    starts = np.arange(0, len(x) - span + 1, hop)
    frames = np.stack([x[s : s + span] for s in starts])
    energy = np.sum(frames[:, :window] ** 2, axis=1)
    loud = energy > 1e-3 * energy.max() if energy.max() > 0 else energy > 0
    frames, energy = frames[loud], energy[loud]
    if len(frames) == 0:
        return None
    size = 1 << math.ceil(math.log2(2 * span))
    spectrum = np.fft.rfft(frames, size)
    head = np.fft.rfft(frames[:, :window], size)
    cross = np.fft.irfft(np.conj(head) * spectrum, size)[:, : max_lag + 1]
    squares = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    shifted_energy = squares[:, lags + window] - squares[:, lags]
    diff = np.maximum(energy[:, None] + shifted_energy - 2 * cross, 0.0)
    cumulative = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / np.maximum(cumulative, 1e-12)
    f0s = []
    for row in cmnd:
        below = np.flatnonzero(row[min_lag:max_lag] < threshold)
        if len(below) == 0:
            continue
        tau = int(below[0]) + min_lag
        while tau + 1 < max_lag and row[tau + 1] < row[tau]:
            tau += 1
        a, b, c = row[tau - 1], row[tau], row[tau + 1]
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator > 0 else 0.0
        f0s.append(sample_rate / (tau + offset))
    return float(np.median(f0s)) if len(f0s) >= 5 else None
