"""WeSpeaker ResNet34 as pyannote 3.x uses it (pyannote/wespeaker-voxceleb-resnet34-LM), in torch.

The graph takes the waveform and computes the Kaldi fbank in-graph, so the served model is
``waveform [B, 1, S] + weights [B, W] -> embedding [B, 256]`` exactly like pyannote's
``WeSpeakerResNet34.forward(waveforms, weights)``:

* fbank = ``torchaudio.compliance.kaldi.fbank(x * 32768, num_mel_bins=80, frame_length=25,
  frame_shift=10, dither=0, window_type="hamming")`` (so: DC offset removed per frame,
  pre-emphasis 0.97, Hamming window, 512-point power spectrum, 80 triangular mel bins from 20 Hz
  to 8 kHz, log with floor at float32 epsilon, snip_edges), then minus its mean over time.
  Everything up to the power spectrum is linear in the frame, so it is one Conv1d
  (400 taps, stride 160, 514 output channels = real and imaginary parts of the 257 bins) with
  the DC removal, pre-emphasis, window and DFT folded into its kernel: exact, and plain ONNX
  (no STFT / DFT operator, which TensorRT and older runtimes lack).
* ResNet34 (BasicBlocks [3, 4, 6, 3], 32 base channels) -> statistics pooling (weighted mean and
  std over time, weights resampled to the pooled frame rate by nearest neighbour) -> Linear.

Why in-graph and not fbank on the client: diarization sends 10 s chunks with frame masks (one
chunk, several speakers), the fbank is cheap next to the ResNet, and it then runs batched on the
GPU beside it; clients stay free of a Kaldi-compatible feature extractor.

State dict keys match pyannote's checkpoint one to one (``resnet.conv1.weight``,
``resnet.bn1.*``, ``resnet.layer{1..4}.{i}.{conv1,bn1,conv2,bn2}.*``,
``resnet.layer{2,3,4}.0.shortcut.{0,1}.*``, ``resnet.seg_1.{weight,bias}``); the fbank
kernels are non-persistent buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.serving.names import SAMPLE_RATE

FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
NFFT = 512
NUM_MEL = 80
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class ResNetConfig:
    m_channels: int = 32
    num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    embed_dim: int = 256


REAL = ResNetConfig()
TINY = ResNetConfig(m_channels=4, num_blocks=(1, 1, 1, 1))


def fbank_frames(num_samples: int) -> int:
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def fbank_kernel() -> NDArray[np.float64]:
    """[514, 400]: frame -> (real, imaginary) 512-point DFT of the Kaldi-preprocessed frame."""
    n = FRAME_LENGTH
    eye = np.eye(n)
    dc = eye - np.full((n, n), 1.0 / n)  # remove the frame's mean
    pre = eye - PREEMPHASIS * np.eye(n, k=-1)  # y[i] = x[i] - 0.97 x[i-1] ...
    pre[0, 0] = 1.0 - PREEMPHASIS  # ... and y[0] = x[0] - 0.97 x[0] (Kaldi replicates x[0])
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / (n - 1))  # Hamming, symmetric
    k = np.arange(NFFT // 2 + 1)[:, None]
    angle = 2 * np.pi * k * np.arange(n)[None, :] / NFFT
    dft = np.concatenate([np.cos(angle), -np.sin(angle)])  # [514, 400]
    kernel: NDArray[np.float64] = dft @ np.diag(window) @ pre @ dc
    return kernel


def mel_banks() -> NDArray[np.float64]:
    """[80, 257] Kaldi's triangular mel filters (the Nyquist bin gets weight 0, as in Kaldi)."""

    def mel(f: Any) -> Any:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    low, high = mel(LOW_FREQ), mel(SAMPLE_RATE / 2)
    delta = (high - low) / (NUM_MEL + 1)
    left = low + np.arange(NUM_MEL)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    bins = mel(SAMPLE_RATE / NFFT * np.arange(NFFT // 2))[None, :]
    up = (bins - left) / (center - left)
    down = (right - bins) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    out: NDArray[np.float64] = np.concatenate([banks, np.zeros((NUM_MEL, 1))], axis=1)
    return out


def kaldi_fbank_reference(waveform: NDArray[np.float32]) -> NDArray[np.float64]:
    """Step-by-step Kaldi fbank in float64 numpy (the spec the folded kernel is checked against)."""
    x = waveform.astype(np.float64) * 32768.0
    count = fbank_frames(x.size)
    index = np.arange(FRAME_LENGTH)[None, :] + FRAME_SHIFT * np.arange(count)[:, None]
    frames = x[index]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - PREEMPHASIS * previous
    frames = frames * (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(FRAME_LENGTH) / 399))
    power = np.abs(np.fft.rfft(frames, n=NFFT)) ** 2
    out: NDArray[np.float64] = np.log(np.maximum(power @ mel_banks().T, EPSILON))
    return out


def build(config: ResNetConfig) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        def __init__(self, in_planes: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

        def forward(self, x: Any) -> Any:
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m = config.m_channels
            self.conv1 = nn.Conv2d(1, m, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(m)
            planes = m
            layers = []
            for i, blocks in enumerate(config.num_blocks):
                out_planes = m * 2**i
                strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
                layer = []
                for stride in strides:
                    layer.append(BasicBlock(planes, out_planes, stride))
                    planes = out_planes
                layers.append(nn.Sequential(*layer))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            stats_dim = (NUM_MEL // 8) * m * 8
            self.seg_1 = nn.Linear(2 * stats_dim, config.embed_dim)

        def forward(self, fbank: Any, weights: Any) -> Any:
            x = F.relu(self.bn1(self.conv1(fbank.unsqueeze(1))))  # [B, 1, 80, T] in
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = x.flatten(1, 2)  # [B, C * 10, T']
            # pyannote's StatsPool: weights resampled to T' by nearest neighbour
            frames, given = x.shape[-1], weights.shape[-1]
            index = torch.div(torch.arange(frames) * given, frames, rounding_mode="floor")
            w = weights.index_select(1, index).unsqueeze(1)  # [B, 1, T']
            v1 = w.sum(dim=2) + 1e-8
            mean = torch.sum(x * w, dim=2) / v1
            dx2 = torch.square(x - mean.unsqueeze(2))
            v2 = torch.square(w).sum(dim=2)
            std = torch.sqrt(torch.sum(dx2 * w, dim=2) / (v1 - v2 / v1 + 1e-8))
            return self.seg_1(torch.cat([mean, std], dim=1))

    class WeSpeakerResNet34(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.resnet = ResNet()
            kernel = torch.from_numpy(fbank_kernel().astype(np.float32))[:, None, :]
            mel = torch.from_numpy(mel_banks().astype(np.float32))
            self.register_buffer("fbank_kernel", kernel, persistent=False)
            self.register_buffer("mel_banks", mel, persistent=False)

        def fbank(self, waveform: Any) -> Any:
            """[B, 1, S] in [-1, 1] -> centred log-mel [B, 80, T]."""
            kernel: Any = self.fbank_kernel
            mel_banks: Any = self.mel_banks
            spec = F.conv1d(waveform * 32768.0, kernel, stride=FRAME_SHIFT)
            bins = NFFT // 2 + 1
            power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2  # [B, 257, T]
            feats = torch.log(torch.clamp(torch.matmul(mel_banks, power), min=EPSILON))
            return feats - feats.mean(dim=2, keepdim=True)

        def forward(self, waveform: Any, weights: Any) -> Any:
            return self.resnet(self.fbank(waveform), weights)

    return WeSpeakerResNet34().eval()
