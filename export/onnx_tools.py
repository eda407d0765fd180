"""Generic ONNX steps shared by every family: export, int8 / fp16 conversion, and parity checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export.spec import GraphSpec


def export_module(module: Any, args: tuple[Any, ...], spec: GraphSpec, path: Path) -> Path:
    """torch.onnx.export with names and dynamic axes taken from the spec.

    The TorchScript-based exporter (dynamo=False) is used: it handles the data-dependent control
    flow of the HF models we export and gives stable graphs across torch releases.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.inference_mode():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes(),
            opset_version=spec.opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization of the weights of MatMul/Gemm (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations for GPUs, inputs and outputs kept fp32 for the clients."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    model16 = float16.convert_float_to_float16(model, keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model16, str(dst))
    return dst


def run_onnx(
    path: Path, feeds: Mapping[str, NDArray[Any]], outputs: Sequence[str] | None = None
) -> list[NDArray[Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    result: list[NDArray[Any]] = session.run(list(outputs) if outputs else None, dict(feeds))
    return result


def max_abs_diff(expected: Sequence[NDArray[Any]], actual: Sequence[NDArray[Any]]) -> float:
    if len(expected) != len(actual):
        raise ValueError(f"output count differs: {len(expected)} vs {len(actual)}")
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            raise ValueError(f"output shape differs: {e.shape} vs {a.shape}")
        if e.size:
            worst = max(worst, float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))))
    return worst


def max_rel_diff(expected: Sequence[NDArray[Any]], actual: Sequence[NDArray[Any]]) -> float:
    """Max |actual - expected| of each output divided by that output's largest |value|: one
    tolerance fits checkpoints whose activations differ in scale (real Whisper's encoder reaches
    values of 24 where the tiny one stays near 1), worst output returned."""
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        if e.size:
            scale = max(float(np.max(np.abs(e.astype(np.float64)))), 1e-12)
            worst = max(worst, max_abs_diff([e], [a]) / scale)
    return worst


class ParityError(AssertionError):
    """An exported graph strays from PyTorch beyond its stated tolerance."""


def check_parity(name: str, diff: float, atol: float) -> float:
    if not diff <= atol:
        raise ParityError(f"{name}: max abs difference {diff:.3g} exceeds tolerance {atol:.3g}")
    return diff
