"""Diarization models: pyannote segmentation-3.0 and the WeSpeaker ResNet34 speaker embedding.

Two Triton models (clustering runs in the orchestrator, ``orchestrator/speaker_turns.py``):

``pyannote_segmentation``  waveform [B, 1, S] float32 (S = 160000: 10 s windows at 16 kHz)
                           -> log_probs [B, F, 7] float32 (F = 589 for 10 s), log-softmax over
                           the powerset classes {}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}
``speaker_embedding``      waveform [B, 1, S] float32 + weights [B, W] float32 (frame weights,
                           e.g. a speaker's activity on the segmentation's 589 frames; any W,
                           resampled in-graph; ones = the whole chunk) -> embedding [B, 256]

Checkpoints: pyannote's Lightning checkpoints from the Hub or a local directory. The speaker
embedding (``pyannote/wespeaker-voxceleb-resnet34-LM``) is always served; the segmentation
(``pyannote/segmentation-3.0``) is gated, so it joins only when HF_TOKEN is set or it is named
with ``--model pyannote_segmentation=...``. ``random`` builds the same architectures randomly
initialised with few units (see ``pyannote_segmentation.TINY`` and ``wespeaker_resnet.TINY``).
Both are checked against torch on fixed inputs; int8 (dynamic, MatMul/Gemm) is served on CPU
when it stays within tolerance; the GPU target adds fp16 graphs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export import pyannote_segmentation as seg
from polydub.export import speech_clips
from polydub.export import wespeaker_resnet as wes
from polydub.export.hub import Expected, fetch_file
from polydub.export.onnx_tools import (
    DESCRIBE,
    check_parity,
    convert_fp16,
    export_module,
    graph_diff,
    quantize_int8,
    run_onnx,
)
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
from polydub.serving.names import (
    SAMPLE_RATE,
    EmbeddingIn,
    EmbeddingOut,
    SegmentationIn,
    SegmentationOut,
)

SEGMENTATION = names.PYANNOTE_SEGMENTATION
EMBEDDING = names.SPEAKER_EMBEDDING
WINDOW_SAMPLES = 160000  # pyannote segmentation-3.0 was trained on 10 s chunks
EMBED_DIM = 256

SEGMENTATION_CHECKPOINT = Checkpoint("pyannote/segmentation-3.0", license="MIT", gated=True)
EMBEDDING_CHECKPOINT = Checkpoint("pyannote/wespeaker-voxceleb-resnet34-LM", license="CC-BY-4.0")

SEGMENTATION_SPEC = GraphSpec(
    name=SEGMENTATION,
    inputs=(TensorSpec(SegmentationIn.WAVEFORM, "float32", ("batch", 1, "samples")),),
    outputs=(
        TensorSpec(SegmentationOut.LOG_PROBS, "float32", ("batch", "frames", len(seg.POWERSET))),
    ),
    fp32_atol=1e-3,  # log-probabilities; unlikely classes reach -20, where float error grows
    int8_atol=5e-2,
)
EMBEDDING_SPEC = GraphSpec(
    name=EMBEDDING,
    inputs=(
        TensorSpec(EmbeddingIn.WAVEFORM, "float32", ("batch", 1, "samples")),
        TensorSpec(EmbeddingIn.WEIGHTS, "float32", ("batch", "weight_frames")),
    ),
    outputs=(TensorSpec(EmbeddingOut.EMBEDDING, "float32", ("batch", EMBED_DIM)),),
    fp32_atol=1e-3,
    # An embedding's scale is the checkpoint's and clustering compares directions: int8 is
    # judged relative to the largest |component|, not in absolute units.
    int8_atol=None,
    int8_rtol=5e-2,
)


# pyannote checkpoints are Lightning files with a config.yaml beside them, not transformers ones.
PYANNOTE_LAYOUT = Expected(config_file="config.yaml")


def build_segmentation(checkpoint: Checkpoint) -> Any:
    import torch

    if checkpoint.random:
        torch.manual_seed(0)
        return seg.build(seg.TINY).freeze()
    model = seg.build(seg.REAL)
    _load_state_dict(model, checkpoint)
    return model.eval().freeze()


def build_embedding(checkpoint: Checkpoint) -> Any:
    import torch

    if checkpoint.random:
        torch.manual_seed(1)
        model = wes.build(wes.TINY)
        _randomise_batchnorm(model)
        return model
    model = wes.build(wes.REAL)
    _load_state_dict(model, checkpoint)
    return model.eval()


def _load_state_dict(model: Any, checkpoint: Checkpoint) -> None:
    """pyannote's Lightning checkpoint into our module; a mismatch is a clear error (a
    checkpoint of another architecture or size), not a traceback."""
    state = seg.load_lightning_state_dict(fetch_file(checkpoint, "pytorch_model.bin"))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0:2]
        raise ConfigurationError(
            f"{checkpoint.describe()} does not fit the expected architecture: {' '.join(first)}",
            code="checkpoint_not_of_family",
        ) from exc


def _randomise_batchnorm(model: Any) -> None:
    """Fresh BatchNorms are identities in eval mode; give them statistics like a trained net's."""
    import torch

    generator = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            stats: Any = module
            stats.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            stats.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def parity_waveforms(batch: int, samples: int, seed: int = 0) -> NDArray[np.float32]:
    """Harmonic tones with a changing pitch plus noise: fixed, speech-like inputs."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    rows = []
    for b in range(batch):
        f0 = 110 + 90 * b + 20 * np.sin(2 * np.pi * 0.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        tone = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = (np.sin(2 * np.pi * (0.3 + 0.1 * b) * t) > -0.2).astype(np.float64)
        rows.append(0.2 * envelope * tone + 0.01 * rng.standard_normal(samples))
    return np.asarray(rows, np.float32)[:, None, :]


def speech_window(samples: int) -> NDArray[np.float32] | None:
    """Two voices (espeak-ng, male then female) in one [1, 1, samples] window, silence-padded;
    None where espeak-ng is not installed."""
    spoken = speech_clips.speech(4, start=4)
    if spoken is None:
        return None
    audio = np.concatenate([a for _, a in spoken])[:samples]
    window = np.zeros((1, 1, samples), np.float32)
    window[0, 0, : audio.size] = audio
    return window


def export_graph(
    module: Any,
    spec: GraphSpec,
    args: tuple[Any, ...],
    checks: list[dict[str, NDArray[Any]]],
    out: Path,
    target: Target,
    report: ExportReport,
) -> None:
    """Export, check fp32 (and int8 / fp16) against torch on every feed in ``checks``."""
    import torch

    fp32 = out / ("model.onnx" if target is Target.GPU else "model_fp32.onnx")
    export_module(module, args, spec, fp32)
    expected = []
    with torch.no_grad():
        for feeds in checks:
            result = module(*(torch.from_numpy(v) for v in feeds.values()))
            expected.append([result.numpy()])

    def worst(path: Path, precision: str) -> float:
        """Over every check feed: absolute or relative, as the spec judges ``precision``."""
        return max(
            graph_diff(spec, precision, e, run_onnx(path, feeds))
            for e, feeds in zip(expected, checks, strict=True)
        )

    report.max_abs_diff[spec.name] = check_parity(
        spec.name, worst(fp32, "fp32"), *spec.tolerance("fp32")
    )
    if target is Target.GPU:
        fp16 = convert_fp16(fp32, out / "model_fp16.onnx")
        diff16 = fp16_diff(fp16, checks, expected)
        report.notes.append(
            f"{spec.name}: fp16 max abs diff {diff16:.3g} (onnxruntime CPU)"
            if diff16 is not None
            else f"{spec.name}: fp16 graph cannot run on onnxruntime's CPU provider; "
            "check it on the GPU server"
        )
        return
    served = out / "model.onnx"
    if spec.quantize:
        int8 = quantize_int8(fp32, out / "model_int8.onnx")
        diff = worst(int8, "int8")
        limit, metric = spec.tolerance("int8")
        kind = DESCRIBE[metric]
        report.int8_max_abs_diff[spec.name] = diff
        if diff <= limit:
            int8.replace(served)
            report.precision[spec.name] = "int8"
            report.notes.append(f"{spec.name}: serving int8 ({kind} {diff:.3g} <= {limit})")
            return
        int8.unlink()
        report.notes.append(f"{spec.name}: int8 {kind} {diff:.3g} > {limit}: serving fp32")
    # The checked fp32 graph is the served one: a hard link, not a second copy of the bytes.
    served.unlink(missing_ok=True)
    served.hardlink_to(fp32)
    report.precision[spec.name] = "fp32"


_FP16_CHECK = """
import sys, numpy as np, onnxruntime as ort
data = np.load(sys.argv[2])
n = int(data["n"])
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
worst = 0.0
for i in range(n):
    names = [k.split("/", 1)[1] for k in data.files if k.startswith(f"{i}/")]
    out = session.run(None, {k: data[f"{i}/{k}"] for k in names})[0]
    worst = max(worst, float(np.abs(out.astype(np.float64) - data[f"expected{i}"]).max()))
print(worst)
"""


def fp16_diff(
    path: Path, checks: list[dict[str, NDArray[Any]]], expected: list[list[NDArray[Any]]]
) -> float | None:
    """fp16 vs torch, in a child process: onnxruntime's CPU provider lacks (and can crash on)
    some fp16 kernels (LSTM, InstanceNorm), which the GPU providers have."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"{i}/{k}": v for i, feeds in enumerate(checks) for k, v in feeds.items()}
        arrays |= {f"expected{i}": e[0] for i, e in enumerate(expected)}
        np.savez(Path(tmp) / "data.npz", n=np.array(len(checks)), **arrays)
        result = subprocess.run(
            [sys.executable, "-c", _FP16_CHECK, str(path), str(Path(tmp) / "data.npz")],
            capture_output=True,
            text=True,
            timeout=300,
        )
    return float(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None


class DiarizationExporter:
    """Speaker embeddings always; pyannote's segmentation only when asked for by name or when
    HF_TOKEN is set (it is gated). Without it the orchestrator diarizes with VAD + embeddings
    over sliding windows + clustering (``orchestrator/speaker_turns.py``)."""

    name = "diarization"
    choosable = True

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        if preset is Preset.TINY:
            return {EMBEDDING: Checkpoint(RANDOM, EMBEDDING_CHECKPOINT.license)}
        return {EMBEDDING: EMBEDDING_CHECKPOINT}

    def optional(self) -> dict[str, Checkpoint]:
        return {SEGMENTATION: SEGMENTATION_CHECKPOINT}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        import torch

        label = ", ".join(f"{m}: {c.describe()}" for m, c in checkpoints.items())
        report = ExportReport(family=self.name, checkpoint=label)
        started = time.perf_counter()
        window = parity_waveforms(2, WINDOW_SAMPLES)
        speech = speech_window(WINDOW_SAMPLES)
        if speech is None:
            report.notes.append("diarization checked on synthetic tones: espeak-ng not installed")
        spoken = [] if speech is None else [{"waveform": speech}]
        if SEGMENTATION in checkpoints:
            export_graph(
                build_segmentation(checkpoints[SEGMENTATION]),
                SEGMENTATION_SPEC,
                (torch.from_numpy(window),),
                [{"waveform": window}, *spoken],
                version_dir(repository, SEGMENTATION),
                target,
                report,
            )
            report.models.append(SEGMENTATION)
        else:
            report.retired.append(SEGMENTATION)
            report.notes.append(
                "diarization without pyannote segmentation (gated): VAD + speaker embeddings "
                "over sliding windows + clustering"
            )
        frames = seg.num_frames(WINDOW_SAMPLES)
        mask = (np.random.default_rng(3).random((2, frames)) > 0.4).astype(np.float32)
        short = parity_waveforms(1, 3 * SAMPLE_RATE + 123, seed=4)
        export_graph(
            build_embedding(checkpoints[EMBEDDING]),
            EMBEDDING_SPEC,
            (torch.from_numpy(window), torch.from_numpy(mask)),
            [
                {"waveform": window, "weights": mask},
                # another length and a single weight: the dynamic axes really are dynamic
                {"waveform": short, "weights": np.ones((1, 1), np.float32)},
                *({**f, "weights": np.ones((1, frames), np.float32)} for f in spoken),
            ],
            version_dir(repository, EMBEDDING),
            target,
            report,
        )
        report.models.append(EMBEDDING)
        report.notes.append(f"diarization export {time.perf_counter() - started:.1f}s")
        if any(c.random for c in checkpoints.values()):
            report.notes.append(
                "random weights (tiny): segmentation and embeddings are meaningless (shapes only)"
            )
        return report
