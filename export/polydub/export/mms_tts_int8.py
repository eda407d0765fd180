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
with any change, so waveform differences say little. ``judge`` compares log-mel spectra: the
distance between the int8 and fp32 graphs at the same seed must stay below the distance between
two seeds of the fp32 graph itself (the variation the sampler already puts in every sentence).
On real trained VITS weights (Piper's ``en_US-joe-medium``, CC0; see
``tests/integration/models/test_tts_int8_real.py``) int8 stays under that (about 0.9x) and Whisper
base hears the same words from both graphs.

Dynamic int8 (what the other families use) was measured on every export until this: it reaches
only the text encoder's MatMuls, so it was no faster (0.53 s against 0.51 s for 4.2 s of audio at
MMS dimensions), and it moved the predicted durations, shifting everything after them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export.mms_tts_reference import example_feeds, vocab_text
from polydub.export.onnx_tools import run_onnx
from polydub.serving.tts_tokenizer import TtsTokenizer
from polydub.serving.whisper_features import mel_filters

N_FFT = 1024
HOP = 256
N_MELS = 80
FLOOR_DB = 80.0  # bins more than this below the loudest count as silence (both sides)
MAX_RATIO = 1.0  # int8's spectral distance over the seed-to-seed distance of fp32


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


class _Feeds:
    """onnxruntime's calibration reader over a list of feeds."""

    def __init__(self, feeds: Sequence[dict[str, NDArray[Any]]]) -> None:
        self._feeds: Iterator[dict[str, NDArray[Any]]] = iter(feeds)

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        return next(self._feeds, None)


def quantize_vocoder(src: Path, dst: Path, calibration: Sequence[dict[str, NDArray[Any]]]) -> int:
    """Writes ``dst``: ``src`` with its vocoder convolutions in int8; the number quantized."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    nodes = vocoder_convs(onnx.load(str(src), load_external_data=False))
    if not nodes:
        raise ValueError(f"{src}: no vocoder residual convolutions found")
    quantize_static(
        str(src),
        str(dst),
        _Feeds(calibration),  # onnxruntime only calls get_next
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        op_types_to_quantize=["Conv"],
        nodes_to_quantize=nodes,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return len(nodes)


def log_mel(waveform: NDArray[Any], sampling_rate: int) -> NDArray[np.float64]:
    """Log-mel power in dB, [frames, N_MELS]."""
    audio = np.asarray(waveform, dtype=np.float64).ravel()
    if audio.size < N_FFT:
        audio = np.pad(audio, (0, N_FFT - audio.size))
    frames = 1 + (audio.size - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(audio[index] * window, axis=1)) ** 2
    mel = power @ mel_filters(N_MELS, sampling_rate, N_FFT).astype(np.float64).T
    db: NDArray[np.float64] = 10.0 * np.log10(np.maximum(mel, 1e-10))
    return db


def spectral_distance(a: NDArray[Any], b: NDArray[Any], sampling_rate: int) -> float:
    """Root-mean-square difference in dB of two waveforms' log-mel spectra over their common
    frames, each floored FLOOR_DB below the louder one's peak."""
    x, y = log_mel(a, sampling_rate), log_mel(b, sampling_rate)
    n = min(len(x), len(y))
    floor = max(float(x.max()), float(y.max())) - FLOOR_DB
    diff = np.maximum(x[:n], floor) - np.maximum(y[:n], floor)
    return float(np.sqrt(np.mean(diff**2)))


@dataclass(frozen=True)
class VocoderVerdict:
    convs: int  # convolutions quantized
    int8_db: float  # spectral distance, int8 vs fp32 at the same seed (mean over sentences)
    seed_db: float  # fp32 vs fp32 at another seed
    same_lengths: bool

    @property
    def ratio(self) -> float:
        return self.int8_db / self.seed_db if self.seed_db > 0 else math.inf

    @property
    def accepted(self) -> bool:
        return self.same_lengths and self.ratio <= MAX_RATIO

    def note(self, name: str) -> str:
        decision = "int8 vocoder served on CPU" if self.accepted else "fp32 served on CPU"
        lengths = "same lengths" if self.same_lengths else "LENGTHS CHANGED"
        return (
            f"{name}: {decision}: {self.convs} residual convolutions in int8; log-mel distance "
            f"to fp32 {self.int8_db:.2f} dB, {self.ratio:.2f}x a second seed's "
            f"{self.seed_db:.2f} dB (limit {MAX_RATIO:.2f}x); {lengths}"
        )


def judge(
    fp32: Sequence[NDArray[Any]],
    int8: Sequence[NDArray[Any]],
    other_seed: Sequence[NDArray[Any]],
    sampling_rate: int,
    convs: int,
) -> VocoderVerdict:
    """Each sequence: the sentences' waveforms, trimmed to their valid lengths."""
    same = all(len(a) == len(b) for a, b in zip(fp32, int8, strict=True))
    int8_db = np.mean(
        [spectral_distance(a, b, sampling_rate) for a, b in zip(fp32, int8, strict=True)]
    )
    seed_db = np.mean(
        [spectral_distance(a, b, sampling_rate) for a, b in zip(fp32, other_seed, strict=True)]
    )
    return VocoderVerdict(convs, float(int8_db), float(seed_db), same)


def place_int8(name: str, fp32_path: Path, spec: TtsTokenizer) -> VocoderVerdict:
    """Quantizes ``fp32_path``'s vocoder and judges it on sentences it was not calibrated on;
    the int8 graph replaces ``fp32_path`` when accepted, else it is deleted."""
    int8_path = fp32_path.with_name("model_int8.onnx")
    calibration = [
        example_feeds(spec, [vocab_text(spec, n, offset=3 * n)], [1.0], [n]) for n in (16, 32, 48)
    ]
    convs = quantize_vocoder(fp32_path, int8_path, calibration)
    # Durations without noise (noise_scale_duration 0): a second seed then keeps the lengths,
    # so the spectra compare frame by frame.
    texts = [vocab_text(spec, n, offset=n + 1) for n in (20, 28, 40)]
    feeds = [example_feeds(spec, [text], [1.0], [7]) for text in texts]
    for feed in feeds:
        feed["noise_scale_duration"] = feed["noise_scale_duration"] * 0.0

    def waveforms(path: Path, seed: int) -> list[NDArray[Any]]:
        out = []
        for feed in feeds:
            wave, length = run_onnx(path, {**feed, "seed": feed["seed"] + seed}, OUTPUTS)
            out.append(wave[0, : int(length[0, 0])])
        return out

    verdict = judge(
        waveforms(fp32_path, 0),
        waveforms(int8_path, 0),
        waveforms(fp32_path, 1),
        spec.sampling_rate,
        convs,
    )
    if verdict.accepted:
        int8_path.replace(fp32_path)
    else:
        int8_path.unlink()
    return verdict


OUTPUTS = ("waveform", "waveform_lengths")
