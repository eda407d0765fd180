"""pyannote/segmentation-3.0 and pyannote/wespeaker-voxceleb-resnet34-LM, as on the Hub.

Each is ``config.yaml`` plus ``pytorch_model.bin``: a Lightning checkpoint whose ``state_dict`` is
the network's and whose metadata pickles pyannote classes (``Specifications``, ``Problem``,
``Resolution``), as pyannote.audio 3 writes it. pyannote is not installed: the classes are
stand-ins registered under pyannote's module names only while pickling, so the file references
``pyannote.audio.core.task.Specifications`` exactly as the real one does and a loader must cope
(polydub's ``load_lightning_state_dict`` does, with stubs). The networks are polydub's own
modules at their REAL sizes (1.5 M and 6.6 M parameters), since polydub loads them at that size.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import types
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.hub.build import EMBEDDING, SEGMENTATION, ModelCard, Scale

PYANNOTE_TASK_MODULE = "pyannote.audio.core.task"
LIGHTNING_VERSION = "2.0.6"
VERSIONS = {"torch": "2.0.1", "pyannote.audio": "3.0.0"}
PYANNOTE_TAGS = ("pyannote", "pyannote-audio", "pyannote-audio-model", "audio", "speech", "speaker")

SEGMENTATION_YAML = """\
task:
  _target_: pyannote.audio.tasks.SpeakerDiarization
  duration: 10.0
  max_speakers_per_chunk: 3
  max_speakers_per_frame: 2
model:
  _target_: pyannote.audio.models.segmentation.PyanNet
  sample_rate: 16000
  num_channels: 1
  sincnet:
    stride: 10
  lstm:
    hidden_size: 128
    num_layers: 4
    bidirectional: true
    monolithic: true
  linear:
    hidden_size: 128
    num_layers: 2
"""
EMBEDDING_YAML = """\
model:
  _target_: pyannote.audio.models.embedding.WeSpeakerResNet34
  sample_rate: 16000
  num_channels: 1
  num_mel_bins: 80
  frame_length: 25
  frame_shift: 10
  dither: 0.0
  window_type: hamming
  use_energy: false
"""


class Problem(enum.Enum):
    BINARY_CLASSIFICATION = 0
    MONO_LABEL_CLASSIFICATION = 1
    MULTI_LABEL_CLASSIFICATION = 2
    REPRESENTATION = 3
    REGRESSION = 4


class Resolution(enum.Enum):
    FRAME = 1
    CHUNK = 2


@dataclass
class Specifications:
    problem: Problem
    resolution: Resolution
    duration: float
    min_duration: float | None = None
    warm_up: tuple[float, float] | None = (0.0, 0.0)
    classes: list[str] | None = None
    powerset_max_classes: int | None = None
    permutation_invariant: bool = False


@contextlib.contextmanager
def _as_pyannote_classes() -> Iterator[None]:
    """Pickle the stand-ins under pyannote's module path (pickle looks classes up by name)."""
    parts = PYANNOTE_TASK_MODULE.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    clashing = [name for name in names if name in sys.modules]
    if clashing:
        raise RuntimeError(f"{clashing[0]} is imported: the fake hub would shadow the real one")
    task = types.ModuleType(PYANNOTE_TASK_MODULE)
    classes: tuple[type, ...] = (Problem, Resolution, Specifications)
    for cls in classes:
        setattr(task, cls.__name__, cls)
    modules = {name: types.ModuleType(name) for name in names[:-1]} | {names[-1]: task}
    saved = {cls: cls.__module__ for cls in classes}
    try:
        sys.modules.update(modules)
        for cls in classes:
            cls.__module__ = PYANNOTE_TASK_MODULE
        yield
    finally:
        for cls, module in saved.items():
            cls.__module__ = module
        for name in names:
            sys.modules.pop(name, None)


def model(repo_id: str) -> Any:
    """polydub's module for the repository, randomly initialised, at the real size."""
    from polydub.export import pyannote_segmentation as seg
    from polydub.export import wespeaker_resnet as wes

    return seg.build(seg.REAL) if repo_id == SEGMENTATION else wes.build(wes.REAL)


def _save_checkpoint(path: Path, state: dict[str, Any], hparams: dict[str, Any], meta: Any) -> None:
    import torch

    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": OrderedDict((k, v.detach().clone()) for k, v in state.items()),
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        "pyannote.audio": meta,
    }
    with _as_pyannote_classes():
        torch.save(checkpoint, path)


def build_segmentation(out: Path, scale: Scale, repo_id: str = SEGMENTATION) -> ModelCard:
    import torch

    torch.manual_seed(zlib.crc32(repo_id.encode()))
    network = model(repo_id)
    (out / "config.yaml").write_text(SEGMENTATION_YAML, encoding="utf-8")
    hparams = {
        "linear": {"hidden_size": 128, "num_layers": 2},
        "lstm": {
            "hidden_size": 128,
            "num_layers": 4,
            "bidirectional": True,
            "monolithic": True,
            "dropout": 0.5,
            "batch_first": True,
        },
        "num_channels": 1,
        "sample_rate": 16000,
        "sincnet": {"stride": 10, "sample_rate": 16000},
    }
    specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=10.0,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    meta = {
        "versions": VERSIONS,
        "architecture": {"module": "pyannote.audio.models.segmentation", "class": "PyanNet"},
        "specifications": specifications,
    }
    _save_checkpoint(out / "pytorch_model.bin", network.state_dict(), hparams, meta)
    return ModelCard(
        license="mit",
        tags=(*PYANNOTE_TAGS, "speaker-diarization", "speaker-change-detection"),
        extra={
            "extra_gated_prompt": "The collected information will help acquire a better "
            "knowledge of pyannote.audio userbase."
        },
    )


def build_embedding(out: Path, scale: Scale, repo_id: str = EMBEDDING) -> ModelCard:
    import torch

    torch.manual_seed(zlib.crc32(repo_id.encode()))
    network = model(repo_id)
    # Fresh BatchNorms are identities in eval mode; trained ones are not.
    generator = torch.Generator().manual_seed(zlib.crc32(repo_id.encode()))
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            stats: Any = module
            stats.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            stats.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    (out / "config.yaml").write_text(EMBEDDING_YAML, encoding="utf-8")
    hparams = {
        "sample_rate": 16000,
        "num_channels": 1,
        "num_mel_bins": 80,
        "frame_length": 25,
        "frame_shift": 10,
        "dither": 0.0,
        "window_type": "hamming",
        "use_energy": False,
    }
    meta = {
        "versions": VERSIONS,
        "architecture": {
            "module": "pyannote.audio.models.embedding.wespeaker",
            "class": "WeSpeakerResNet34",
        },
        "specifications": Specifications(
            problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=5.0
        ),
    }
    _save_checkpoint(out / "pytorch_model.bin", network.state_dict(), hparams, meta)
    return ModelCard(
        license="cc-by-4.0",
        tags=(*PYANNOTE_TAGS, "wespeaker", "speaker-recognition", "speaker-embedding"),
        extra={"datasets": ["voxceleb"]},
    )
