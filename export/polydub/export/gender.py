"""Voice gender from pitch: an ONNX graph of frame-level pitch features, and a documented rule.

Why pitch and not a classifier head on speaker embeddings: no labelled speech and no trained
head can be downloaded here, and a head fitted on our own generated speech would only learn
that speech. Fundamental frequency separates adult voices well and needs no weights: adult
male speaking F0 is typically 85-155 Hz, adult female 165-255 Hz, so the rule (client side,
``orchestrator/inference/gender.py``) is *median F0 of voiced frames >= 165 Hz -> female*.
For dubbing this is the property that matters (which TTS voice register fits); it is a voice
pitch class, not a person's gender, and children or high-pitched male voices read "female".

The graph (model ``gender``, no learned parameters, fp32 everywhere):

    waveform [B, S] float32 16 kHz -> f0_hz [B, F], periodicity [B, F], energy_db [B, F]

with F = 1 + (S - 640) // 160 frames (40 ms Hann window, 10 ms hop). Per frame, Boersma's
autocorrelation method (1993): the windowed frame's autocorrelation (one Conv1d computing the
1024-point DFT of the windowed frame, power spectrum, then a MatMul back to lags 0..266),
normalised by lag 0 and divided by the window's own autocorrelation; the pitch period is the
first local peak in 60-500 Hz within 15% of the best one (guards against octave-down errors),
refined by parabolic interpolation. periodicity = that peak's normalised value (voicing),
energy_db = 10 log10 of the frame's Hann-weighted mean square.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export import speech_clips
from polydub.export.onnx_tools import check_parity, export_module, max_abs_diff, run_onnx
from polydub.export.repository import version_dir
from polydub.export.spec import (
    Checkpoint,
    Checkpoints,
    ExportReport,
    GraphSpec,
    Preset,
    Target,
    TensorSpec,
)
from polydub.serving import names
from polydub.serving.names import SAMPLE_RATE, GenderIn, GenderOut

MODEL = names.GENDER
FRAME = 640  # 40 ms: two periods of a 50 Hz voice
HOP = 160  # 10 ms
NFFT = 1024  # >= FRAME + max lag: linear, not circular, autocorrelation
MIN_F0, MAX_F0 = 60.0, 500.0
MIN_LAG = int(np.floor(SAMPLE_RATE / MAX_F0))  # 32
MAX_LAG = int(np.ceil(SAMPLE_RATE / MIN_F0))  # 267
PEAK_RATIO = 0.85  # first peak within 15% of the best one

SPEC = GraphSpec(
    name=MODEL,
    inputs=(TensorSpec(GenderIn.WAVEFORM, "float32", ("batch", "samples")),),
    outputs=(
        TensorSpec(GenderOut.F0_HZ, "float32", ("batch", "frames")),
        TensorSpec(GenderOut.PERIODICITY, "float32", ("batch", "frames")),
        TensorSpec(GenderOut.ENERGY_DB, "float32", ("batch", "frames")),
    ),
    fp32_atol=1e-2,  # f0 in Hz after a parabolic fit: 0.01 Hz
    quantize=False,  # no weights to quantize; peak picking needs fp32
)
CHECKPOINT = Checkpoint(ref="polydub/pitch-rule (no weights)", license="Apache-2.0")


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < FRAME else 1 + (num_samples - FRAME) // HOP


def _constants() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], float]:
    n = np.arange(FRAME)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * (n + 0.5) / FRAME)  # Hann, no zero end points
    k = np.arange(NFFT // 2 + 1)[:, None]
    angle = 2 * np.pi * k * n[None, :] / NFFT
    dft = np.concatenate([np.cos(angle), -np.sin(angle)]) * window[None, :]  # [1026, 640]
    lags = np.arange(MAX_LAG + 2)  # one past MAX_LAG for the peak test / parabola
    weight = np.full(NFFT // 2 + 1, 2.0)
    weight[[0, -1]] = 1.0
    inverse = weight[:, None] * np.cos(2 * np.pi * k * lags[None, :] / NFFT) / NFFT  # [513, L]
    window_acf = np.array([np.dot(window[: FRAME - t], window[t:]) for t in lags])
    window_acf /= window_acf[0]
    power = float(np.sum(window**2))
    return (
        dft.astype(np.float32),
        inverse.astype(np.float32),
        window_acf.astype(np.float32),
        power,
    )


def build() -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    dft, inverse, window_acf, window_power = _constants()

    class PitchFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("dft", torch.from_numpy(dft)[:, None, :])
            self.register_buffer("inverse", torch.from_numpy(inverse))
            self.register_buffer("window_acf", torch.from_numpy(window_acf))

        def forward(self, waveform: Any) -> tuple[Any, Any, Any]:
            kernel: Any = self.dft
            inv: Any = self.inverse
            wacf: Any = self.window_acf
            spec = F.conv1d(waveform.unsqueeze(1), kernel, stride=HOP)  # [B, 1026, F]
            bins = NFFT // 2 + 1
            power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2
            acf = torch.matmul(power.transpose(1, 2), inv)  # [B, F, L]: lags 0..MAX_LAG+1
            energy = acf[:, :, :1]
            norm = acf / (energy + 1e-10) / wacf
            lo, hi = MIN_LAG, MAX_LAG  # candidate lags lo..hi inclusive
            centre = norm[:, :, lo : hi + 1]
            peak = (centre >= norm[:, :, lo - 1 : hi]) & (centre > norm[:, :, lo + 1 : hi + 2])
            peak_values = torch.where(peak, centre, torch.full_like(centre, -2.0))
            best = peak_values.max(dim=2, keepdim=True).values
            good = peak & (centre >= PEAK_RATIO * best)
            first = torch.argmax(good.to(torch.float32), dim=2, keepdim=True)  # first True
            y1 = torch.gather(centre, 2, first)
            y0 = torch.gather(norm[:, :, lo - 1 : hi], 2, first)
            y2 = torch.gather(norm[:, :, lo + 1 : hi + 2], 2, first)
            denom = y0 - 2 * y1 + y2
            safe = torch.where(denom.abs() > 1e-6, denom, torch.ones_like(denom))
            shift = torch.where(denom.abs() > 1e-6, 0.5 * (y0 - y2) / safe, torch.zeros_like(denom))
            lag = (first + lo).to(torch.float32) + shift.clamp(-0.5, 0.5)
            f0 = (SAMPLE_RATE / lag)[:, :, 0]
            periodicity = y1.clamp(0.0, 1.0)[:, :, 0]
            energy_db = 10 * torch.log10(energy[:, :, 0] / window_power + 1e-10)
            return f0, periodicity, energy_db

    return PitchFeatures().eval()


def parity_waveforms() -> NDArray[np.float32]:
    """Two fixed signals: a gliding harmonic voice (95 -> 230 Hz) and noise, 2 s each."""
    rng = np.random.default_rng(0)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    f0 = 95 + 135 * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 10))
    noise = 0.05 * rng.standard_normal(t.size)
    out: NDArray[np.float32] = np.stack([voice, noise]).astype(np.float32)
    return out


class GenderExporter:
    name = "gender"
    choosable = False  # a fixed signal-processing graph: nothing to download for any preset

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        return {MODEL: CHECKPOINT}

    def optional(self) -> dict[str, Checkpoint]:
        return {}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        import torch

        started = time.perf_counter()
        module = build()
        waveforms = parity_waveforms()
        spoken = speech_clips.speech(2)  # a male and a female espeak-ng voice
        if spoken is not None:
            rows = np.zeros((len(spoken), waveforms.shape[1]), np.float32)
            for row, (_, audio) in zip(rows, spoken, strict=True):
                row[: audio.size] = audio[: row.size]
            waveforms = np.concatenate([waveforms, rows])
        path = version_dir(repository, MODEL) / "model.onnx"
        export_module(module, (torch.from_numpy(waveforms),), SPEC, path)
        with torch.no_grad():
            expected = [t.numpy() for t in module(torch.from_numpy(waveforms))]
        actual = run_onnx(path, {"waveform": waveforms})
        # f0 is only meaningful where a peak was found; compare it on voiced frames, and the
        # voicing and energy features everywhere.
        voiced = expected[1] > 0.5
        diffs = [
            max_abs_diff([expected[0][voiced]], [actual[0][voiced]]),
            max_abs_diff(expected[1:], actual[1:]),
        ]
        report = ExportReport(family=self.name, checkpoint=CHECKPOINT.ref, models=[MODEL])
        report.precision[MODEL] = "fp32"
        report.max_abs_diff[MODEL] = check_parity(MODEL, max(diffs), *SPEC.tolerance("fp32"))
        if spoken is None:
            report.notes.append(f"{MODEL}: checked on synthetic signals: espeak-ng not installed")
        report.notes.append(
            f"{MODEL}: pitch features (no weights; same fp32 graph for CPU and GPU), rule "
            f"median F0 >= 165 Hz -> female; {time.perf_counter() - started:.1f}s"
        )
        return report
