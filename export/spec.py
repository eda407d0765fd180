"""What an export is: per-graph specs (inputs, dynamic axes, opset, tolerance), presets, targets.

In the spirit of optimum's exporter configs: the facts about a graph live in one declarative
spec, and the generic code (export, quantize, check, place in the repository) reads them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class Preset(enum.StrEnum):
    """Which checkpoints to use.

    tiny: randomly initialised models built offline from the real config classes with small
    dimensions (tests, air-gapped smoke runs: the speech they produce is noise).
    small / large: real checkpoints from the Hugging Face Hub. auto: real when the Hub answers.
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
    fp32_atol: float = 1e-4  # max abs difference vs PyTorch on fixed inputs
    int8_atol: float = 5e-2  # looser: dynamic quantization of weights
    quantize: bool = True  # int8 for CPU (graphs dominated by MatMul/Gemm benefit)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for tensor in (*self.inputs, *self.outputs):
            named = {i: d for i, d in enumerate(tensor.dims) if isinstance(d, str)}
            if named:
                axes[tensor.name] = named
        return axes


@dataclass(frozen=True)
class Checkpoint:
    hub_id: str
    license: str
    gated: bool = False


@dataclass
class ExportReport:
    """What one family's export wrote and how close it came to PyTorch."""

    family: str
    checkpoint: str
    models: list[str] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # graph -> fp32 vs torch
    int8_max_abs_diff: dict[str, float] = field(default_factory=dict)
    token_match: dict[str, bool] = field(default_factory=dict)  # generation: same greedy tokens
    notes: list[str] = field(default_factory=list)


class FamilyExporter(Protocol):
    name: str

    def checkpoints(self, preset: Preset) -> list[Checkpoint]: ...

    def export(self, preset: Preset, target: Target, repository: Path) -> ExportReport:
        """Write the family's model files into repository/<model>/1/ and check them."""
        ...
