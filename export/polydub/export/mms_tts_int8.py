"""MMS-TTS int8 for the CPU profile: the vocoder's residual convolutions in 8 bits.

VITS spends most of its time in the HiFi-GAN vocoder, and there mostly in the residual blocks'
dilated convolutions (72 of MMS's 163 convolutions, C -> C channels at every upsampling stage).
Those of every stage but the last (54 at MMS dimensions; ``vocoder_convs`` says why) are
quantized statically (QDQ, int8 weights per output channel, uint8 activations calibrated on the
export's own inputs), which onnxruntime runs as ``QLinearConv``. Everything before the vocoder
stays fp32, so the predicted durations, and with them the lengths and the timing the dub stage
fits, are exactly those of the fp32 graph. Static scales also keep a row's result independent of
the batch it runs in.

Accepted on what a listener hears rather than on samples: the phase of a vocoder's output moves
with any change, so waveform differences say little. ``judge`` compares log spectra over the
whole band down to 100 dB below the peak (so a raised noise floor counts): the distance between
the int8 and fp32 graphs at the same seed must stay below the distance between two seeds of the
fp32 graph itself (the variation the sampler already puts in every sentence). On real trained
VITS weights (Piper's ``en_US-joe-medium``, CC0; see
``tests/integration/models/test_tts_int8_real.py``) int8 measures about 0.75x that, and Whisper
base hears the same words from both graphs; with the last stage in int8 too it measured 2.4x.
Weights use 7 bits (``reduce_range``): onnxruntime's u8 x s8 kernels can saturate on CPUs
without VNNI (this one), so the verdict does not depend on the host that exports.

If quantizing fails, fp32 is served and the report says why: int8 is an optimisation, never a
reason for an export to fail.

Dynamic int8 (what the other families use) was measured on every export until this: it reaches
only the text encoder's MatMuls, so it was no faster (0.53 s against 0.51 s for 4.2 s of audio at
MMS dimensions), and it moved the predicted durations, shifting everything after them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export.mms_tts_reference import example_feeds, vocab_text
from polydub.serving.tts_tokenizer import TtsTokenizer

log = logging.getLogger(__name__)

N_FFT = 1024
HOP = 256
FLOOR_DB = 100.0  # bins further below the louder waveform's peak count as that floor
MAX_RATIO = 1.0  # int8's spectral distance over the seed-to-seed distance of fp32
OUTPUTS = ("waveform", "waveform_lengths")

Wave = NDArray[Any]


def vocoder_convs(model: Any) -> list[str]:
    """The residual blocks' convolutions but the last stage's: a ``Conv`` fed by a ``LeakyRelu``
    (directly or through the 2-D layout's ``Unsqueeze``) that keeps its channel count, at more
    channels than the narrowest such stage.

    The upsampling (``ConvTranspose``) and the one-channel ``conv_post`` stay fp32; no other part
    of VITS uses leaky ReLU. The last stage (fewest channels, most samples) stays fp32 too: its
    activations are the waveform's, and 8 bits there put a noise floor under the speech (on
    Piper's joe voice, silence rose from 93 to 62 dB below the peak; without it, to 79 dB) for
    little time (MMS: 1.63x with it, 1.56x without)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    found: list[tuple[str, int]] = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        source = producers.get(node.input[0])
        if source is not None and source.op_type in {"Unsqueeze", "Reshape"}:
            source = producers.get(source.input[0])
        shape = weights.get(node.input[1])
        if source is None or source.op_type != "LeakyRelu" or shape is None:
            continue
        if shape[0] == shape[1] and shape[-1] > 1:
            found.append((node.name, shape[0]))
    if not found:
        return []
    narrowest = min(channels for _, channels in found)
    return [name for name, channels in found if channels > narrowest]


def int8_convs(model: Any) -> int:
    """How many ``Conv`` nodes take their weight from a ``DequantizeLinear`` (QDQ int8)."""
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dequantized)


class _Feeds:
    """onnxruntime's calibration reader over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, NDArray[Any]]]) -> None:
        self._feeds: Iterator[dict[str, NDArray[Any]]] = iter(feeds)

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        return next(self._feeds, None)


def quantize_vocoder(src: Path, dst: Path, calibration: Sequence[dict[str, NDArray[Any]]]) -> int:
    """Writes ``dst``: ``src`` with its vocoder convolutions in int8; how many are int8 there."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))  # a proto, not the path: onnxruntime then writes its shape-
    nodes = vocoder_convs(model)  # inferred copy to a temporary folder, not beside ``src``
    if not nodes:
        raise ValueError(f"{src}: no vocoder residual convolutions found")
    quantize_static(
        model,
        str(dst),
        _Feeds(calibration),  # onnxruntime only calls get_next
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["Conv"],
        nodes_to_quantize=nodes,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return int8_convs(onnx.load(str(dst)))


def log_spectrum(waveform: Wave) -> NDArray[np.float64]:
    """Power per STFT bin in dB, [frames, N_FFT // 2 + 1], up to the Nyquist frequency."""
    audio = np.asarray(waveform, dtype=np.float64).ravel()
    if audio.size < N_FFT:
        audio = np.pad(audio, (0, N_FFT - audio.size))
    frames = 1 + (audio.size - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(audio[index] * window, axis=1)) ** 2
    db: NDArray[np.float64] = 10.0 * np.log10(np.maximum(power, 1e-12))
    return db


def spectral_distance(a: Wave, b: Wave) -> float:
    """Log-spectral distance in dB: per frame the root-mean-square difference over the bins,
    averaged over the frames both waveforms have; bins are floored FLOOR_DB below the louder
    one's peak."""
    x, y = log_spectrum(a), log_spectrum(b)
    n = min(len(x), len(y))
    floor = max(float(x.max()), float(y.max())) - FLOOR_DB
    diff = np.maximum(x[:n], floor) - np.maximum(y[:n], floor)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


@dataclass(frozen=True)
class VocoderVerdict:
    convs: int  # convolutions in int8
    int8_db: float  # spectral distance, int8 vs fp32 at the same seed (mean over sentences)
    seed_db: float  # fp32 vs fp32 at another seed
    same_lengths: bool
    error: str = ""  # why no int8 graph could be made

    @property
    def ratio(self) -> float:
        return self.int8_db / self.seed_db if self.seed_db > 0 else math.inf

    @property
    def accepted(self) -> bool:
        return not self.error and self.same_lengths and self.ratio <= MAX_RATIO

    def note(self, name: str) -> str:
        decision = "int8 vocoder served on CPU" if self.accepted else "fp32 served on CPU"
        if self.error:
            return f"{name}: {decision}: no int8 graph: {self.error}"
        lengths = "same lengths" if self.same_lengths else "LENGTHS CHANGED"
        return (
            f"{name}: {decision}: {self.convs} residual convolutions in int8; log-spectral "
            f"distance to fp32 {self.int8_db:.2f} dB, {self.ratio:.2f}x a second seed's "
            f"{self.seed_db:.2f} dB (limit {MAX_RATIO:.2f}x); {lengths}"
        )


def judge(
    int8_pairs: Sequence[tuple[Wave, Wave]], seed_pairs: Sequence[tuple[Wave, Wave]], convs: int
) -> VocoderVerdict:
    """``int8_pairs``: (fp32, int8) waveforms of the same sentence and noise; ``seed_pairs``:
    two fp32 waveforms of a sentence that differ only in their noise (the same lengths)."""
    return VocoderVerdict(
        convs=convs,
        int8_db=float(np.mean([spectral_distance(a, b) for a, b in int8_pairs])),
        seed_db=float(np.mean([spectral_distance(a, b) for a, b in seed_pairs])),
        same_lengths=all(len(a) == len(b) for a, b in int8_pairs),
    )


def place_int8(name: str, fp32_path: Path, spec: TtsTokenizer) -> VocoderVerdict:
    """Quantizes ``fp32_path``'s vocoder and judges it on sentences it was not calibrated on;
    the int8 graph replaces ``fp32_path`` when accepted. Nothing else is left beside it."""
    int8_path = fp32_path.with_name("model_int8.onnx")
    # Calibration: three lengths at three speaking rates, the default noise.
    calibration = [
        example_feeds(spec, [vocab_text(spec, n, offset=3 * n)], [rate], [n])
        for n, rate in ((16, 1.25), (32, 1.0), (48, 0.8))
    ]
    # Judged without duration noise (noise_scale_duration 0): another seed then keeps the
    # lengths, so the spectra compare frame by frame.
    feeds = [
        example_feeds(spec, [vocab_text(spec, n, offset=n + 1)], [rate], [7])
        for n, rate in ((20, 1.0), (28, 0.8), (40, 1.0))
    ]
    for feed in feeds:
        feed["noise_scale_duration"] = np.zeros_like(feed["noise_scale_duration"])
    try:
        convs = quantize_vocoder(fp32_path, int8_path, calibration)
        fp32, int8 = _Graph(fp32_path), _Graph(int8_path)
        same_seed = fp32.speak(feeds, 0)
        verdict = judge(
            list(zip(same_seed, int8.speak(feeds, 0), strict=True)),
            list(zip(same_seed, fp32.speak(feeds, 1), strict=True)),
            convs,
        )
    except Exception as error:  # an optimisation that failed: serve fp32
        log.warning("%s: int8 vocoder not made, serving fp32", name, exc_info=True)
        verdict = VocoderVerdict(
            0, math.nan, math.nan, False, error=f"{type(error).__name__}: {error}"
        )
    if verdict.accepted:
        int8_path.replace(fp32_path)
    else:
        int8_path.unlink(missing_ok=True)
    return verdict


class _Graph:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def speak(self, feeds: Sequence[dict[str, NDArray[Any]]], seed: int) -> list[Wave]:
        out = []
        for feed in feeds:
            wave, length = self.session.run(list(OUTPUTS), {**feed, "seed": feed["seed"] + seed})
            out.append(np.asarray(wave)[0, : int(length[0, 0])])
        return out
