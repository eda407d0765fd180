"""Silero VAD v6 (MIT), rebuilt as a batchable graph from the ONNX that ships in faster-whisper.

The faster-whisper wheel (MIT, like Silero VAD itself) carries ``assets/silero_vad_v6.onnx``:
real weights, usable offline. Its interface is built for one stream at a time:

    input [seq_len, 576]   windows of 512 samples with 64 samples of left context, 16 kHz only
    h, c  [1, 1, 128]      LSTM state; its batch axis is fixed at 1
    speech_probs [seq_len], hn, cn [1, 1, 128]

``seq_len`` is the LSTM's *time* axis, not a batch axis, and the state pins the batch to 1, so
Triton cannot batch two streams into one run of that graph. We therefore rebuild the same
network in torch (its initializers loaded one to one, LSTM gates reordered from ONNX's i,o,f,c
to torch's i,f,g,o) with an explicit batch axis, the context windows cut in-graph, and export:

    audio        [B, 64 + 512*T]  float32: 64 samples of context (zeros at the stream start)
                                  followed by T windows of 512 samples at 16 kHz
    state        [B, 2, 128]      float32: LSTM (h, c), zeros at the stream start
    speech_probs [B, T]           float32: speech probability of each window
    state_out    [B, 2, 128]      float32: the state to pass with the stream's next chunk

Requests of equal shape (the client sends fixed-size chunks) share a batch. The rebuilt graph
is checked against the original ONNX on the same audio (per stream, state carried).
"""

from __future__ import annotations

import shutil
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
from polydub.serving.names import SAMPLE_RATE, VadIn, VadOut

MODEL = names.SILERO_VAD
WINDOW = 512  # samples per window at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees before each window
HIDDEN = 128

CHECKPOINT = Checkpoint(ref="faster-whisper:assets/silero_vad_v6.onnx", license="MIT")

SPEC = GraphSpec(
    name=MODEL,
    inputs=(
        TensorSpec(VadIn.AUDIO, "float32", ("batch", "samples")),
        TensorSpec(VadIn.STATE, "float32", ("batch", 2, HIDDEN)),
    ),
    outputs=(
        TensorSpec(VadOut.SPEECH_PROBS, "float32", ("batch", "windows")),
        TensorSpec(VadOut.STATE_OUT, "float32", ("batch", 2, HIDDEN)),
    ),
    opset=17,
    fp32_atol=1e-4,
    quantize=False,  # Conv + LSTM only: dynamic int8 (MatMul/Gemm) has nothing to quantize
)


def source_onnx() -> Path:
    """The Silero VAD ONNX inside the installed faster-whisper wheel."""
    from faster_whisper.utils import get_assets_path

    path = Path(get_assets_path()) / "silero_vad_v6.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"silero_vad_v6.onnx not found in faster-whisper ({path})")
    return path


def build_module(path: Path) -> Any:
    """The torch twin of the shipped graph, weights copied from its initializers."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    inits = {
        t.name: numpy_helper.to_array(t).copy() for t in onnx.load(str(path)).graph.initializer
    }

    class SileroVad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            basis = torch.from_numpy(inits["encoder.feature_extractor.forward_basis_buffer"])
            self.register_buffer("forward_basis", basis)  # [258, 1, 256]: STFT as a conv
            self.convs = nn.ModuleList(
                [
                    nn.Conv1d(129, 128, 3, stride=1, padding=1),
                    nn.Conv1d(128, 64, 3, stride=2, padding=1),
                    nn.Conv1d(64, 64, 3, stride=2, padding=1),
                    nn.Conv1d(64, 128, 3, stride=1, padding=1),
                ]
            )
            self.lstm = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
            self.head = nn.Conv1d(HIDDEN, 1, 1)

        def forward(self, audio: Any, state: Any) -> tuple[Any, Any]:
            batch = audio.shape[0]
            frames = audio[:, CONTEXT:].reshape(batch, -1, WINDOW)  # [B, T, 512]
            # Window t sees the last 64 samples of window t-1 (the chunk's context for t = 0).
            context = torch.cat([audio[:, None, :CONTEXT], frames[:, :-1, -CONTEXT:]], dim=1)
            x = torch.cat([context, frames], dim=2).reshape(-1, 1, CONTEXT + WINDOW)
            x = nn.functional.pad(x, (128, 128), mode="reflect")
            basis: Any = self.forward_basis
            spec = nn.functional.conv1d(x, basis, stride=128)[:, :, 1:]
            x = torch.sqrt(spec[:, :129] ** 2 + spec[:, 129:] ** 2)
            for conv in self.convs:
                x = torch.relu(conv(x))
            x = x.reshape(batch, -1, HIDDEN)  # [B, T, 128]: one vector per window
            h0 = state[:, 0].unsqueeze(0).contiguous()
            c0 = state[:, 1].unsqueeze(0).contiguous()
            y, (hn, cn) = self.lstm(x, (h0, c0))
            probs = torch.sigmoid(self.head(torch.relu(y).transpose(1, 2)))[:, 0]  # [B, T]
            return probs, torch.stack([hn[0], cn[0]], dim=1)

    module: Any = SileroVad()
    with torch.no_grad():
        for i, conv in enumerate(module.convs):
            conv.weight.copy_(torch.from_numpy(inits[f"encoder.conv_layers.{i}.weight"]))
            conv.bias.copy_(torch.from_numpy(inits[f"encoder.conv_layers.{i}.bias"]))
        module.head.weight.copy_(torch.from_numpy(inits["decoder.conv1d.weight"]))
        module.head.bias.copy_(torch.from_numpy(inits["decoder.conv1d.bias"]))
        w, r, b = (inits[f"onnx::LSTM_{n}"][0] for n in (209, 210, 211))
        order = _onnx_to_torch_gates(HIDDEN)
        module.lstm.weight_ih_l0.copy_(torch.from_numpy(w[order]))
        module.lstm.weight_hh_l0.copy_(torch.from_numpy(r[order]))
        module.lstm.bias_ih_l0.copy_(torch.from_numpy(b[: 4 * HIDDEN][order]))
        module.lstm.bias_hh_l0.copy_(torch.from_numpy(b[4 * HIDDEN :][order]))
    return module.eval()


def _onnx_to_torch_gates(hidden: int) -> NDArray[np.int64]:
    # ONNX stacks LSTM gates as (i, o, f, c); torch as (i, f, g=c, o)
    i, o, f, c = (np.arange(hidden) + k * hidden for k in range(4))
    return np.concatenate([i, f, c, o])


def original_probs(path: Path, audio: NDArray[np.float32]) -> NDArray[np.float32]:
    """The shipped graph over one stream (a multiple of 512 samples), as faster-whisper runs it."""
    windows = audio.reshape(-1, WINDOW)
    context = np.zeros_like(windows[:, :CONTEXT])
    context[1:] = windows[:-1, -CONTEXT:]
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    feeds = {"input": np.concatenate([context, windows], axis=1), "h": zeros, "c": zeros}
    probs: NDArray[np.float32] = run_onnx(path, feeds, ["speech_probs"])[0]
    return probs


def parity_audio(seconds: float = 4.0, seed: int = 0) -> NDArray[np.float32]:
    """A tone burst in noise: a fixed input with both low and high speech probabilities."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE) // WINDOW * WINDOW
    t = np.arange(n) / SAMPLE_RATE
    voiced = (np.sin(2 * np.pi * 1.5 * t) > 0).astype(np.float32)
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) ** 2
    audio: NDArray[np.float32] = (voiced * tone + 0.01 * rng.standard_normal(n)).astype(np.float32)
    return audio


class VadExporter:
    name = "vad"
    choosable = False  # the same real weights for every preset: they ship in the wheel

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        return {MODEL: CHECKPOINT}

    def optional(self) -> dict[str, Checkpoint]:
        return {}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        import torch

        started = time.perf_counter()
        src = source_onnx()
        module = build_module(src)
        out = version_dir(repository, MODEL)
        path = out / "model.onnx"
        audio = parity_audio()
        # Streams of different content in one batch (batching must not mix them): the tone
        # burst, its reverse and, where espeak-ng is installed, spoken sentences.
        streams = [audio, audio[::-1].copy()]
        spoken = speech_clips.speech(2)
        if spoken is not None:
            speech = np.concatenate([a for _, a in spoken])[: audio.size]
            streams.append(np.pad(speech, (0, audio.size - speech.size)))
        state = torch.zeros(len(streams), 2, HIDDEN)
        batch = torch.from_numpy(np.stack([_with_context(s) for s in streams]))
        export_module(module, (batch, state), SPEC, path)

        with torch.no_grad():
            expected = [t.numpy() for t in module(batch, state)]
        actual = run_onnx(path, {"audio": batch.numpy(), "state": state.numpy()})
        report = ExportReport(family=self.name, checkpoint=CHECKPOINT.ref, models=[MODEL])
        report.precision[MODEL] = "fp32"
        report.max_abs_diff[MODEL] = check_parity(
            MODEL, max_abs_diff(expected, actual), *SPEC.tolerance("fp32")
        )
        # And against the graph faster-whisper ships, stream by stream.
        shipped = np.stack([original_probs(src, s) for s in streams])
        report.max_abs_diff[f"{MODEL}:vs_shipped_onnx"] = check_parity(
            f"{MODEL} vs shipped", max_abs_diff([shipped], [actual[0]]), *SPEC.tolerance("fp32")
        )
        if spoken is None:
            report.notes.append(f"{MODEL}: checked on synthetic signals: espeak-ng not installed")
        shutil.copy2(src, out / "silero_vad_v6_source.onnx")  # kept for checks, not served
        report.notes.append(
            f"{MODEL}: real Silero VAD v6 weights from the faster-whisper wheel (MIT); one graph "
            f"for CPU and GPU (fp32: Conv+LSTM, nothing for dynamic int8); "
            f"{time.perf_counter() - started:.1f}s"
        )
        return report


def _with_context(audio: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return out
