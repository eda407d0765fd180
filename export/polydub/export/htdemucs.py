"""Hybrid Transformer Demucs (HT-Demucs, facebookresearch/demucs: code and weights MIT) as the
``separation_htdemucs`` graph: the network without its STFT, iSTFT and source mixing.

``HTDemucs.forward`` computes a complex STFT, runs a spectrogram branch (complex as channels)
and a waveform branch joined by a cross transformer, then adds the inverse STFT of the first
to the second. Complex tensors and ``torch.stft`` do not export to ONNX, so the graph starts
after the STFT and stops before the iSTFT; ``polydub.serving.htdemucs`` does both in numpy with
the model's own parameters (nfft 4096, hop 1024, its padding). The graph keeps the vocals
(speech) source only and runs one fixed-length chunk, the checkpoint's training segment (the
model pads shorter input to it, and its positional embeddings were trained at that length):

    waveform [B, C, LENGTH], spectrogram [B, 2C, 2048, FRAMES]
        -> speech_spectrogram [B, 2C, 2048, FRAMES], speech_waveform [B, C, LENGTH]

Checkpoints are demucs's own format (``demucs.states``: a ``.th`` file holding ``klass``,
``args``, ``kwargs`` and ``state``, the state possibly in half precision), as a file, a
directory holding one, or a Hub repository holding one at its root (``owner/name:file.th``
names one among several). It is read with ``torch.load(weights_only=True)``, HTDemucs and
Fraction allowed: a checkpoint that needs anything else to unpickle is refused, not run.
DiffQ-quantized checkpoints (``*_q``) are refused too (HT-Demucs ships none). ``tiny_checkpoint``
writes random weights of the same architecture (4 channels, 1 transformer layer) in that format.

fp32 only, for CPU and GPU alike, like the mask net: the graph is dominated by convolutions and
GroupNorm, where dynamic int8 brings little and costs accuracy on a residual stem.
"""

from __future__ import annotations

import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export.hub import fetch_single
from polydub.export.onnx_tools import check_parity, export_module, max_rel_diff, run_onnx
from polydub.export.repository import version_dir
from polydub.export.spec import Checkpoint, ExportReport, GraphSpec, TensorSpec
from polydub.serving import htdemucs as front
from polydub.serving.names import SEPARATION, SEPARATION_HTDEMUCS, HtDemucsIn, HtDemucsOut

MODEL = SEPARATION_HTDEMUCS
SPEECH_SOURCE = "vocals"
LICENSE = "MIT"
FP32_RTOL = 1e-3  # |onnx - torch| over the output's largest |value| (tiny: 9e-5 measured)
# numpy front end + graph against HTDemucs.forward's vocals, over the chunk's peak (-54 dB):
# measured 9e-5 on the tiny weights, 6e-4 on random weights of the released size (42M).
END_TO_END_RTOL = 2e-3


def graph_spec(chunking: front.Chunking | None = None) -> GraphSpec:
    """The graph of one checkpoint (its fixed chunk), or with named axes when ``None``."""
    channels: int | str = chunking.channels if chunking else "channels"
    cac: int | str = 2 * chunking.channels if chunking else "cac_channels"
    length: int | str = chunking.length if chunking else "length"
    frames: int | str = chunking.frames if chunking else "frames"
    wave = ("batch", channels, length)
    spec = ("batch", cac, front.BINS, frames)
    return GraphSpec(
        name=MODEL,
        inputs=(
            TensorSpec(HtDemucsIn.WAVEFORM, "float32", wave),
            TensorSpec(HtDemucsIn.SPECTROGRAM, "float32", spec),
        ),
        outputs=(
            TensorSpec(HtDemucsOut.SPEECH_SPECTROGRAM, "float32", spec),
            TensorSpec(HtDemucsOut.SPEECH_WAVEFORM, "float32", wave),
        ),
        fp32_atol=None,
        fp32_rtol=FP32_RTOL,
        quantize=False,
    )


SPEC = graph_spec()


def checkpoint_file(checkpoint: Checkpoint) -> Path | None:
    """The ``.th`` file ``checkpoint`` names: the file, the one in its directory, or the one at
    the root of its Hub repository (``owner/name``, or ``owner/name:file.th`` among several),
    downloaded into the Hub cache. None when it names no demucs checkpoint (a mask-net
    directory or repository, random)."""
    local = None if checkpoint.random else Path(checkpoint.ref).expanduser()
    if local is None:
        return None
    if not local.exists():
        if checkpoint.ref.startswith(("/", ".", "~")):
            return None  # a path that is not there: the mask-net loader names it
        return fetch_single(checkpoint, ".th")
    if local.is_file():
        return local if local.suffix == ".th" else None
    found = sorted(local.glob("*.th"))
    if len(found) > 1:
        raise ConfigurationError(
            f"{local} holds {len(found)} demucs checkpoints ({', '.join(p.name for p in found)}): "
            "name the .th file of the one to serve",
            code="checkpoint_ambiguous",
        )
    return found[0] if found else None


def _read(path: Path) -> dict[str, Any]:
    import torch
    from demucs.htdemucs import HTDemucs

    try:
        with torch.serialization.safe_globals([HTDemucs, Fraction]):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal or a corrupt file: both name the file
        raise ConfigurationError(
            f"{path}: not a loadable HT-Demucs checkpoint ({exc})", code="checkpoint_not_of_family"
        ) from exc
    if not isinstance(package, dict) or package.get("klass") is not HTDemucs:
        raise ConfigurationError(
            f"{path}: not an HT-Demucs checkpoint (klass "
            f"{package.get('klass') if isinstance(package, dict) else type(package)})",
            code="checkpoint_not_of_family",
        )
    if package["state"].get("__quantized"):
        raise ConfigurationError(
            f"{path}: a DiffQ-quantized checkpoint; export an unquantized one",
            code="checkpoint_not_of_family",
        )
    return package


def load(path: Path) -> Any:
    """The HTDemucs of a demucs checkpoint, in float32, in eval mode."""
    import inspect

    from demucs.htdemucs import HTDemucs

    package = _read(path)
    known = inspect.signature(HTDemucs).parameters
    kwargs = {k: v for k, v in package["kwargs"].items() if k in known}  # as demucs does
    model = HTDemucs(*package["args"], **kwargs)
    model.load_state_dict({k: v.float() for k, v in package["state"].items()})
    if SPEECH_SOURCE not in model.sources:
        raise ConfigurationError(
            f"{path}: sources {model.sources} have no {SPEECH_SOURCE!r}",
            code="checkpoint_not_of_family",
        )
    if model.samplerate != front.SAMPLE_RATE or model.nfft != front.NFFT or not model.cac:
        raise ConfigurationError(
            f"{path}: samplerate {model.samplerate}, nfft {model.nfft}, cac {model.cac}; "
            f"the front end serves {front.SAMPLE_RATE} Hz, nfft {front.NFFT}, complex as channels",
            code="checkpoint_not_of_family",
        )
    return model.float().eval()


def tiny_checkpoint(path: Path, *, seconds: float = 7.8, seed: int = 0) -> Path:
    """Random HT-Demucs weights of the released architecture at small width, written in
    demucs's checkpoint format (half-precision state, as ``demucs.states`` saves it). The
    chunk is the released models' 7.8 s unless ``seconds`` says otherwise (tests: shorter)."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    args = (["drums", "bass", "other", "vocals"],)
    kwargs: dict[str, Any] = {
        "channels": 4,
        "depth": 4,
        "t_layers": 1,
        "t_heads": 2,
        "dconv_comp": 2,
        "segment": Fraction(seconds).limit_denominator(100),
        "samplerate": front.SAMPLE_RATE,
    }
    model = HTDemucs(*args, **kwargs)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": state}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(package, path)
    return path


def speech_graph(model: Any) -> Any:
    """``HTDemucs.forward`` between its STFT and its iSTFT, the vocals source only."""
    import torch
    from einops import rearrange
    from torch import nn

    index = model.sources.index(SPEECH_SOURCE)

    class SpeechGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, waveform: Any, spectrogram: Any) -> tuple[Any, Any]:
            m = self.model
            x = spectrogram
            batch, _, bins, frames = x.shape
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (1e-5 + std)
            meant = waveform.mean(dim=(1, 2), keepdim=True)
            stdt = waveform.std(dim=(1, 2), keepdim=True)
            xt = (waveform - meant) / (1e-5 + stdt)
            saved, saved_t, lengths, lengths_t = [], [], [], []
            for idx, encode in enumerate(m.encoder):
                lengths.append(x.shape[-1])
                inject = None
                if idx < len(m.tencoder):
                    lengths_t.append(xt.shape[-1])
                    tenc = m.tencoder[idx]
                    xt = tenc(xt)
                    if not tenc.empty:
                        saved_t.append(xt)
                    else:
                        inject = xt
                x = encode(x, inject)
                if idx == 0 and m.freq_emb is not None:
                    frs = torch.arange(x.shape[-2], device=x.device)
                    emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                    x = x + m.freq_emb_scale * emb
                saved.append(x)
            if m.crosstransformer:
                if m.bottom_channels:
                    f = x.shape[2]
                    x = rearrange(x, "b c f t-> b c (f t)")
                    x = rearrange(m.channel_upsampler(x), "b c (f t)-> b c f t", f=f)
                    xt = m.channel_upsampler_t(xt)
                x, xt = m.crosstransformer(x, xt)
                if m.bottom_channels:
                    x = rearrange(x, "b c f t-> b c (f t)")
                    x = rearrange(m.channel_downsampler(x), "b c (f t)-> b c f t", f=f)
                    xt = m.channel_downsampler_t(xt)
            offset = m.depth - len(m.tdecoder)
            for idx, decode in enumerate(m.decoder):
                x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
                if idx >= offset:
                    tdec = m.tdecoder[idx - offset]
                    length_t = lengths_t.pop(-1)
                    if tdec.empty:
                        xt, _ = tdec(pre[:, :, 0], None, length_t)
                    else:
                        xt, _ = tdec(xt, saved_t.pop(-1), length_t)
            sources = len(m.sources)
            x = x.view(batch, sources, -1, bins, frames) * std[:, None] + mean[:, None]
            xt = xt.view(batch, sources, -1, waveform.shape[-1]) * stdt[:, None] + meant[:, None]
            return x[:, index], xt[:, index]

    return SpeechGraph().eval()


def parity_chunks(chunking: front.Chunking) -> NDArray[np.float32]:
    """Two chunks [2, C, length]: a harmonic voice-like glide over a chord and noise, and
    silence (the normalisation's edge case)."""
    rng = np.random.default_rng(0)
    t = np.arange(chunking.length) / front.SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(110 + 60 * t / t[-1]) / front.SAMPLE_RATE
    voice = 0.3 * sum(np.sin(k * phase) / k for k in range(1, 8))
    chord = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (196.0, 247.0, 294.0))
    channels = [voice + chord * (1 + c) + 0.02 * rng.standard_normal(t.size) for c in range(2)]
    first = np.stack(channels[: chunking.channels])
    out: NDArray[np.float32] = np.stack([first, np.zeros_like(first)]).astype(np.float32)
    return out


def export(checkpoint: Checkpoint, path: Path, repository: Path) -> ExportReport:
    """Export the HT-Demucs checkpoint at ``path`` as ``separation_htdemucs``, checked twice:
    the graph against the wrapped PyTorch module, and the numpy front end plus the graph
    against ``HTDemucs.forward``'s vocals on the same chunk."""
    import torch
    from torch.jit._trace import TracerWarning

    started = time.perf_counter()
    model = load(path)
    chunking = front.Chunking(model.audio_channels, int(model.segment * model.samplerate))
    spec = graph_spec(chunking)
    waves = parity_chunks(chunking)
    specs = np.stack([front.spectrogram(w) for w in waves])
    graph = speech_graph(model)
    inputs = (torch.from_numpy(waves), torch.from_numpy(specs))
    onnx_path = version_dir(repository, MODEL) / "model.onnx"
    # nn.MultiheadAttention's fused inference kernel has no ONNX symbolic: trace the plain path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():  # shape arithmetic traced to constants: the graph is
            warnings.simplefilter("ignore", TracerWarning)  # fixed-length by design
            export_module(graph, inputs, spec, onnx_path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    with torch.no_grad():
        expected = [t.numpy() for t in graph(*inputs)]
        reference = model(torch.from_numpy(waves))[:, model.sources.index(SPEECH_SOURCE)].numpy()
    feeds = {str(HtDemucsIn.WAVEFORM): waves, str(HtDemucsIn.SPECTROGRAM): specs}
    actual = run_onnx(onnx_path, feeds)
    report = ExportReport(family="separation", checkpoint=checkpoint.describe(), models=[MODEL])
    report.retired.append(SEPARATION)  # one separation model serves at a time
    report.precision[MODEL] = "fp32"
    report.max_abs_diff[MODEL] = check_parity(
        MODEL, max_rel_diff(expected, actual), *spec.tolerance("fp32")
    )
    served = np.stack(
        [front.speech_of(s, w, chunking.length) for s, w in zip(*actual, strict=True)]
    )
    end_to_end = max_rel_diff([reference], [served.astype(np.float32)])
    check_parity(
        f"{MODEL} (front end + graph vs HTDemucs.forward)", end_to_end, END_TO_END_RTOL, "rel"
    )
    seconds = chunking.length / front.SAMPLE_RATE
    report.notes.append(
        f"{MODEL}: HT-Demucs {model.depth} layers x {model.channels} channels, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {seconds:.2f} s "
        f"chunks ({chunking.channels} channels x {chunking.length} samples, {chunking.frames} "
        f"frames); front end + graph vs HTDemucs.forward: {end_to_end:.2g} of the peak; "
        f"{time.perf_counter() - started:.1f}s"
    )
    return report
