"""PyanNet (pyannote/segmentation-3.0) written in plain torch, loadable from pyannote's checkpoint.

pyannote.audio is not a dependency (it pulls torchaudio and lightning); this module rebuilds the
network with the same module tree, so ``load_state_dict`` takes the checkpoint's ``state_dict``
unchanged. Key mapping (ours = pyannote's, one to one):

    sincnet.wav_norm1d.{weight,bias}                 InstanceNorm1d(1, affine) on the waveform
    sincnet.conv1d.0.filterbank.{low_hz_,band_hz_}   asteroid ParamSincFB parameters
    sincnet.conv1d.0.filterbank.{n_,window_}         its buffers (half time axis, half Hamming)
    sincnet.conv1d.{1,2}.{weight,bias}               Conv1d(80, 60, 5), Conv1d(60, 60, 5)
    sincnet.norm1d.{0,1,2}.{weight,bias}             InstanceNorm1d(80|60|60, affine)
    lstm.{weight,bias}_{ih,hh}_l{0..3}[_reverse]     LSTM(60, 128, 4 layers, bidirectional)
    linear.{0,1}.{weight,bias}                       Linear(256, 128), Linear(128, 128)
    classifier.{weight,bias}                         Linear(128, 7): powerset classes

Forward (as pyannote's): waveform [B, 1, S] at 16 kHz -> SincNet (|sinc conv| -> max-pool 3 ->
instance norm -> leaky relu, then twice conv 5 -> pool -> norm -> leaky relu) -> BiLSTM ->
leaky relu linears -> classifier -> log-softmax over the 7 powerset classes
{}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}. 10 s (160000 samples) give 589 frames, one every
270 samples (16.875 ms), each seeing 991 samples.

The checkpoint (``pytorch_model.bin``) is a Lightning checkpoint whose extra entries pickle
pyannote classes; :func:`load_lightning_state_dict` reads it without importing pyannote.
"""

from __future__ import annotations

import itertools
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polydub.serving.names import SAMPLE_RATE

FRAME_STEP = 270  # samples between output frames: 10 (sinc stride) * 3 * 3 * 3 (pools)
FRAME_SIZE = 991  # receptive field of one output frame, in samples
NUM_SPEAKERS = 3
POWERSET = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2))


@dataclass(frozen=True)
class PyanNetConfig:
    sinc_filters: int = 80
    conv_channels: int = 60
    lstm_hidden: int = 128
    lstm_layers: int = 4
    linear_hidden: int = 128
    linear_layers: int = 2
    num_classes: int = len(POWERSET)


REAL = PyanNetConfig()
# Tiny: the same layers and strides (same frame grid, same output classes), few units.
TINY = PyanNetConfig(sinc_filters=8, conv_channels=8, lstm_hidden=8, lstm_layers=1, linear_hidden=8)


def num_frames(num_samples: int) -> int:
    """Output frames for an input of ``num_samples`` (conv 251/10, pool 3, conv 5, pool 3, ...)."""
    n = (num_samples - 251) // 10 + 1
    for kernel in (3, 5, 3, 5, 3):
        n = n // 3 if kernel == 3 else n - 4
    return max(n, 0)


def build(config: PyanNetConfig) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ParamSincFB(nn.Module):
        """asteroid-filterbanks' ParamSincFB: band-pass sinc filters (cos and sin halves)."""

        def __init__(self, n_filters: int, kernel_size: int = 251, stride: int = 10) -> None:
            super().__init__()
            self.n_filters, self.kernel_size, self.stride = n_filters, kernel_size, stride
            self.min_low_hz, self.min_band_hz = 50.0, 50.0
            half = kernel_size // 2
            # Initialised on the mel scale as asteroid does; a checkpoint overwrites them.
            mel = np.linspace(_to_mel(30), _to_mel(SAMPLE_RATE / 2 - 100), n_filters // 2 + 1)
            hz = _to_hz(mel).astype(np.float32)
            self.low_hz_ = nn.Parameter(torch.from_numpy(hz[:-1].copy()).view(-1, 1))
            self.band_hz_ = nn.Parameter(torch.from_numpy(np.diff(hz)).view(-1, 1))
            window = np.hamming(kernel_size)[:half].astype(np.float32)
            self.register_buffer("window_", torch.from_numpy(window))
            n = 2 * math.pi * torch.arange(-half, 0.0).view(1, -1) / SAMPLE_RATE
            self.register_buffer("n_", n)

        def filters(self) -> Any:
            low = self.min_low_hz + torch.abs(self.low_hz_)
            high = torch.clamp(
                low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz, SAMPLE_RATE / 2
            )
            band = (high - low)[:, 0]
            n: Any = self.n_
            window: Any = self.window_
            ft_low, ft_high = torch.matmul(low, n), torch.matmul(high, n)
            cos_left = ((torch.sin(ft_high) - torch.sin(ft_low)) / (n / 2)) * window
            cos = torch.cat([cos_left, 2 * band.view(-1, 1), torch.flip(cos_left, dims=[1])], 1)
            sin_left = ((torch.cos(ft_low) - torch.cos(ft_high)) / (n / 2)) * window
            zeros = torch.zeros_like(band.view(-1, 1))
            sin = torch.cat([sin_left, zeros, -torch.flip(sin_left, dims=[1])], 1)
            filters = torch.cat([cos, sin], 0) / (2 * torch.cat([band, band])[:, None])
            return filters.view(self.n_filters, 1, self.kernel_size)

    class Encoder(nn.Module):
        def __init__(self, filterbank: ParamSincFB) -> None:
            super().__init__()
            self.filterbank = filterbank
            self.frozen: Any = None

        def freeze(self) -> None:
            """Compute the sinc filters once: the exported graph gets a plain Conv weight."""
            with torch.no_grad():
                self.frozen = self.filterbank.filters().detach().clone()

        def forward(self, x: Any) -> Any:
            filters = self.frozen if self.frozen is not None else self.filterbank.filters()
            return F.conv1d(x, filters, stride=self.filterbank.stride)

    class SincNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            f, c = config.sinc_filters, config.conv_channels
            self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
            self.conv1d = nn.ModuleList(
                [Encoder(ParamSincFB(f)), nn.Conv1d(f, c, 5), nn.Conv1d(c, c, 5)]
            )
            self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
            self.norm1d = nn.ModuleList([nn.InstanceNorm1d(n, affine=True) for n in (f, c, c)])

        def forward(self, waveform: Any) -> Any:
            x = self.wav_norm1d(waveform)
            for i, (conv, pool, norm) in enumerate(
                zip(self.conv1d, self.pool1d, self.norm1d, strict=True)
            ):
                x = conv(x)
                if i == 0:
                    x = torch.abs(x)
                x = F.leaky_relu(norm(pool(x)))
            return x

    class PyanNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sincnet = SincNet()
            self.lstm = nn.LSTM(
                config.conv_channels,
                config.lstm_hidden,
                num_layers=config.lstm_layers,
                bidirectional=True,
                batch_first=True,
            )
            sizes = [2 * config.lstm_hidden] + [config.linear_hidden] * config.linear_layers
            self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in itertools.pairwise(sizes)])
            self.classifier = nn.Linear(sizes[-1], config.num_classes)

        def freeze(self) -> Any:
            encoder: Any = self.sincnet.conv1d[0]
            encoder.freeze()
            return self

        def forward(self, waveform: Any) -> Any:
            x = self.sincnet(waveform).transpose(1, 2)  # [B, frames, features]
            x, _ = self.lstm(x)
            for linear in self.linear:
                x = F.leaky_relu(linear(x))
            return F.log_softmax(self.classifier(x), dim=-1)

    return PyanNet().eval()


def _to_mel(hz: float) -> float:
    return float(2595 * np.log10(1 + hz / 700))


def _to_hz(mel: Any) -> Any:
    return 700 * (10 ** (mel / 2595) - 1)


class _Stub:
    """Stands in for a pyannote object pickled in a checkpoint's metadata."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(("pyannote", "pytorch_lightning", "lightning")):
            return _Stub
        return super().find_class(module, name)


class _PickleModule:
    Unpickler = _Unpickler
    load = pickle.load


def load_lightning_state_dict(path: Path) -> dict[str, Any]:
    """The ``state_dict`` of a pyannote (Lightning) checkpoint, without pyannote installed.

    Only the metadata entries (task specifications, versions) reference pyannote classes; they
    are replaced by stubs. Tensors load as usual. Use on checkpoints from trusted sources only
    (the Hub repos named in the exporter), as with any pickle.
    """
    import torch

    checkpoint = torch.load(
        str(path), map_location="cpu", pickle_module=_PickleModule, weights_only=False
    )
    state: dict[str, Any] = checkpoint.get("state_dict", checkpoint)
    return state
