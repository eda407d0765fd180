"""Speech / background separation: a spectrogram-mask network of the MDX-Net family.

Why this architecture and which weights (issue #16). The candidates were Hybrid Transformer
Demucs (facebookresearch/demucs: code and weights MIT) and UVR's MDX-Net vocal models (the UVR
GUI is MIT, but its model files carry no license of their own and were trained on MUSDB18,
whose audio is for non-commercial research: not safe to ship). HT-Demucs is the checkpoint to
recommend, but its time branch and in-graph complex STFT do not export cleanly to one ONNX
graph, and no package on PyPI carries its weights (``demucs`` and ``demucs-onnx`` download them
at run time from a host we cannot reach). So the served graph is the MDX-Net design, which is
ONNX-native: TFC-TDF blocks (3x3 time-frequency convolutions, then a fully connected layer
across frequency) on the log magnitude, ending in a sigmoid *speech* mask. STFT, chunking and
overlap-add stay beside the graph in numpy (``polydub.serving.separation``); background is
input minus speech, so the stems sum back to the input exactly.

    spectrogram [B, 2, FRAMES, BINS] float32 -> speech_mask [B, FRAMES, BINS] float32

Checkpoints: ``random`` (the tiny preset: a 1-block, 4-channel net, the mask is noise) or a
directory / Hub id holding ``config.json`` (``{"model_type": "polydub-mask-net", "channels",
"blocks", "bottleneck"}``) and ``model.safetensors`` (this module's state dict). No preset but
tiny serves it by default: random weights would damage every mix; ``--model separation=REF``
adds it. A REF that is a demucs ``.th`` checkpoint (or a directory or Hub repository holding
one at its root) is exported by ``polydub.export.htdemucs`` instead, as the Triton model
``separation_htdemucs``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export.hub import fetch_file
from polydub.export.onnx_tools import check_parity, export_module, max_abs_diff, run_onnx
from polydub.export.repository import version_dir
from polydub.export.spec import (
    RANDOM,
    Checkpoint,
    Checkpoints,
    ExportReport,
    GraphSpec,
    Preset,
    Target,
    TensorSpec,
)
from polydub.serving import names
from polydub.serving.names import SeparationIn, SeparationOut
from polydub.serving.separation import BINS, FRAMES, batches

MODEL = names.SEPARATION
MODEL_TYPE = "polydub-mask-net"
SPEC = GraphSpec(
    name=MODEL,
    inputs=(TensorSpec(SeparationIn.SPECTROGRAM, "float32", ("batch", 2, "frames", BINS)),),
    outputs=(TensorSpec(SeparationOut.SPEECH_MASK, "float32", ("batch", "frames", BINS)),),
    fp32_atol=1e-4,  # mask values in [0, 1]
    quantize=False,  # convolution-dominated; dynamic int8 helps MatMul graphs, not this one
)
LICENSE = "MIT"
# The base of ``--model separation=REF`` (its ref replaced); the license recorded is MIT: name a
# checkpoint released under it.
OPTIONAL = Checkpoint("polydub-mask-net", LICENSE)


@dataclass(frozen=True)
class MaskNetConfig:
    channels: int = 4
    blocks: int = 1
    bottleneck: int = 16  # the TDF layer's width across frequency

    @classmethod
    def read(cls, path: Path) -> MaskNetConfig:
        data = json.loads(path.read_text())
        if data.get("model_type") != MODEL_TYPE:
            raise ConfigurationError(
                f"{path}: model_type {data.get('model_type')!r}, expected {MODEL_TYPE!r}",
                code="checkpoint_not_of_family",
            )
        return cls(int(data["channels"]), int(data["blocks"]), int(data["bottleneck"]))


def build(config: MaskNetConfig, seed: int = 0) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Tfc(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
            )

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    class Tdf(nn.Module):
        def __init__(self, bottleneck: int) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(BINS, bottleneck), nn.ReLU(), nn.Linear(bottleneck, BINS), nn.ReLU()
            )

        def forward(self, x: Any) -> Any:
            return self.layers(x)  # across the last axis: frequency

    class MaskNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, config.channels, 3, padding=1)
            self.tfc = nn.ModuleList(Tfc(config.channels) for _ in range(config.blocks))
            self.tdf = nn.ModuleList(Tdf(config.bottleneck) for _ in range(config.blocks))
            self.head = nn.Conv2d(config.channels, 1, 1)

        def forward(self, spectrogram: Any) -> Any:
            magnitude = torch.sqrt(spectrogram[:, 0] ** 2 + spectrogram[:, 1] ** 2 + 1e-12)
            x = self.stem(torch.log1p(magnitude).unsqueeze(1))  # [B, C, T, F]
            for tfc, tdf in zip(self.tfc, self.tdf, strict=True):
                x = x + tfc(x)
                x = x + tdf(x)
            return torch.sigmoid(self.head(x))[:, 0]

    return MaskNet().eval()


def load(checkpoint: Checkpoint) -> tuple[Any, MaskNetConfig]:
    """The network of ``checkpoint``: random (tiny) or weights from a directory / the Hub."""
    if checkpoint.random:
        config = MaskNetConfig()
        return build(config), config
    config = MaskNetConfig.read(fetch_file(checkpoint, "config.json"))
    from safetensors.torch import load_file

    module = build(config)
    state = load_file(str(fetch_file(checkpoint, "model.safetensors")))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigurationError(
            f"{checkpoint.ref}: weights do not fit the mask net "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})",
            code="checkpoint_not_of_family",
        )
    return module.eval(), config


def parity_spectrograms() -> NDArray[np.float32]:
    """Two chunks' spectrograms: a harmonic voice-like glide over noise, and silence."""
    from polydub.serving.separation import CHUNK, SAMPLE_RATE

    rng = np.random.default_rng(0)
    t = np.arange(CHUNK) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(110 + 60 * t / t[-1]) / SAMPLE_RATE
    voice = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 8))
    audio = np.concatenate([voice + 0.05 * rng.standard_normal(t.size), np.zeros(CHUNK)])
    _, specs = next(batches(audio.astype(np.float32), 2))
    return specs


class SeparationExporter:
    name = "separation"
    choosable = True

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        return {MODEL: Checkpoint(RANDOM, LICENSE)} if preset is Preset.TINY else {}

    def optional(self) -> dict[str, Checkpoint]:
        return {MODEL: OPTIONAL}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        import torch

        checkpoint = checkpoints.get(MODEL)
        if checkpoint is None:
            report = ExportReport(family=self.name, checkpoint="none")
            report.notes.append(f"{MODEL}: not served (add --model separation=HUB_ID|DIR|FILE.th)")
            return report
        from polydub.export import htdemucs

        demucs_file = htdemucs.checkpoint_file(checkpoint)
        if demucs_file is not None:  # a demucs .th checkpoint: HT-Demucs, its own graph
            return htdemucs.export(checkpoint, demucs_file, repository)
        started = time.perf_counter()
        module, config = load(checkpoint)
        specs = parity_spectrograms()
        path = version_dir(repository, MODEL) / "model.onnx"
        export_module(module, (torch.from_numpy(specs),), SPEC, path)
        with torch.no_grad():
            expected = module(torch.from_numpy(specs)).numpy()
        actual = run_onnx(path, {SeparationIn.SPECTROGRAM: specs})[0]
        report = ExportReport(family=self.name, checkpoint=checkpoint.describe(), models=[MODEL])
        report.retired.append(names.SEPARATION_HTDEMUCS)  # one separation model at a time
        report.precision[MODEL] = "fp32"
        report.max_abs_diff[MODEL] = check_parity(
            MODEL, max_abs_diff([expected], [actual]), *SPEC.tolerance("fp32")
        )
        report.notes.append(
            f"{MODEL}: mask net {config.blocks} block(s) x {config.channels} channels "
            f"({FRAMES} frames x {BINS} bins per 6 s chunk; same fp32 graph for CPU and GPU); "
            f"{time.perf_counter() - started:.1f}s"
        )
        return report
