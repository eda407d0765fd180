"""Generic ONNX steps shared by every family: export, external data, int8 / fp16 conversion,
tied weights, and parity checks."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export.spec import GraphSpec

EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot hold a graph over 2 GB: weights go beside


def export_module(module: Any, args: tuple[Any, ...], spec: GraphSpec, path: Path) -> Path:
    """torch.onnx.export with names and dynamic axes taken from the spec.

    The TorchScript-based exporter (dynamo=False) is used: it handles the data-dependent control
    flow of the HF models we export and gives stable graphs across torch releases. A graph over
    2 GB, which torch writes with one external file per weight, ends with one ``<name>.data``.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    before = set(path.parent.iterdir())
    module.eval()
    with torch.inference_mode():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[str(t.name) for t in spec.inputs],
            output_names=[str(t.name) for t in spec.outputs],
            dynamic_axes=spec.dynamic_axes(),
            opset_version=spec.opset,
            dynamo=False,
            do_constant_folding=True,
        )
    pieces = set(path.parent.iterdir()) - before - {path}
    if pieces:
        consolidate_external_data(path, pieces)
    return path


# ------------------------------------------------------------------ files and external data


def data_file(path: Path) -> Path:
    """Where a graph's weights go when they are stored beside it: ``<name>.data``."""
    return path.with_name(path.name + ".data")


def graph_bytes(path: Path) -> int:
    """The graph file and its external data."""
    data = data_file(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def save_graph(model: Any, dst: Path, large: bool) -> Path:
    """Save a graph (an onnx.ModelProto); ``large``: its weights go to one ``<name>.data`` file
    beside it, as protobuf cannot hold more than 2 GB."""
    import onnx

    for old in (dst, data_file(dst)):
        old.unlink(missing_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(dst),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=data_file(dst).name,
        size_threshold=1024,
    )
    return dst


def consolidate_external_data(path: Path, pieces: set[Path]) -> None:
    """Graphs over 2 GB (whisper-large, NLLB-3.3B) are written by torch with one external file
    per weight; keep one ``<name>.data`` beside the graph instead."""
    import onnx

    model = onnx.load(str(path))  # reads the external pieces
    for piece in pieces:
        piece.unlink()
    save_graph(model, path, large=True)


def copy_graph(src: Path, dst: Path) -> Path:
    """A graph and its weights under another name (the weights' file is named after it)."""
    import onnx

    return save_graph(onnx.load(str(src)), dst, graph_bytes(src) > EXTERNAL_DATA_BYTES)


def tie_graph(path: Path) -> int:
    """Store a decoder's tied output projection once (``tie_transposed_weights``): its token
    embedding transposed, which the exporter's constant folding stores a second time (106 MB of
    whisper-base's 302 MB decoder, 1 GB of NLLB-600M's). Rewrites the graph in place; returns
    the bytes saved."""
    import onnx

    model = onnx.load(str(path))
    saved = tie_transposed_weights(model)
    if saved:
        save_graph(model, path, graph_bytes(path) - saved > EXTERNAL_DATA_BYTES)
    return saved


# ------------------------------------------------------------------ int8 and fp16


def quantize_int8(
    src: Path, dst: Path, external_data: bool | None = None, *, token_embeddings: bool = False
) -> Path:
    """Dynamic int8 quantization of the weights of MatMul/Gemm; activations are quantized at
    run time with one scale per tensor, i.e. per batch: a row's result depends on the other rows
    (see ``quantize_weights_int8`` for a batch-invariant recipe). A tied output projection
    (``tie_transposed_weights``) is quantized too, from a transposed copy.
    ``token_embeddings``: the token embedding tables too (``embedding_int8``), looked up in 8
    bits. ``external_data``: write the weights beside the graph (over protobuf's 2 GB); None:
    when the fp32 graph is that large."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if external_data is None:
        external_data = graph_bytes(src) > EXTERNAL_DATA_BYTES
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    untied = dst.parent / f".{dst.stem}-untied" / "model.onnx"
    try:
        source = src
        if untie_for_quantization(model):
            # A ModelProto handed to quantize_dynamic is held three times at once (ours, its
            # deepcopy, its shape-inferred reload): 20 GiB for a 4.3 GB graph at NLLB-3.3B's
            # width. Written out and dropped, it is loaded once, from the file.
            source = save_graph(model, untied, large=True)
        del model
        quantize_dynamic(
            str(source),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=external_data,
        )
    finally:
        shutil.rmtree(untied.parent, ignore_errors=True)
    if token_embeddings:
        from polydub.export.embedding_int8 import quantize_token_embeddings

        model = onnx.load(str(dst))
        if quantize_token_embeddings(model):
            weights = sum(len(t.raw_data) for t in model.graph.initializer)
            save_graph(model, dst, weights > EXTERNAL_DATA_BYTES)
    return dst


def quantize_weights_int8(
    src: Path, dst: Path, block_size: int = 32, accuracy_level: int | None = None
) -> Path:
    """Weight-only int8: every MatMul with a constant weight becomes onnxruntime's MatMulNBits
    (bits=8, one scale and zero point per ``block_size`` weights of a column). Activations stay
    fp32 (``accuracy_level`` None) or are quantized per row and block (4): either way each row
    of a batch is computed on its own, so results do not depend on what else is in the batch,
    unlike ``quantize_int8``, whose one activation scale per tensor is the whole batch's.
    A tied output projection (``tie_transposed_weights``) is quantized too, from a transposed
    copy; the fp32 embedding stays for its Gather.
    """
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    untie_for_quantization(model)
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # one INFO line per node otherwise
    try:
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=block_size,
            is_symmetric=False,
            accuracy_level=accuracy_level,
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = data_file(src).exists()  # consolidated external weights (> 2 GB)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations for GPUs, inputs and outputs kept fp32 for the clients.

    onnxruntime's converter: onnxconverter-common's leaves a graph's own Cast-to-float nodes
    typed float32 behind float16 consumers (NLLB: onnxruntime refuses the result) and breaks
    Whisper's encoder, whose last_hidden_state is both an output and the K/V projections' input
    (a MatMul left with mixed fp32/fp16 inputs).
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    return save_graph(model, dst, large=graph_bytes(src) > 2 * EXTERNAL_DATA_BYTES)


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


def rms_rel_diff(expected: Sequence[NDArray[Any]], actual: Sequence[NDArray[Any]]) -> float:
    """Root-mean-square of ``actual - expected`` over the root-mean-square of ``expected``, per
    output, worst output returned: the error's share of the signal (an inverse SNR), where
    ``max_rel_diff`` is ruled by the single worst element. Quantized graphs are judged by it:
    on real whisper-base, weight-only int8 moves one cross-K/V element by 55% of that output's
    range while the error's RMS stays 5% of the signal's and the greedy tokens hold."""
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            raise ValueError(f"output shape differs: {e.shape} vs {a.shape}")
        if e.size:
            e64 = e.astype(np.float64)
            error = float(np.sqrt(np.mean((a.astype(np.float64) - e64) ** 2)))
            worst = max(worst, error / max(float(np.sqrt(np.mean(e64**2))), 1e-12))
    return worst


class ParityError(AssertionError):
    """An exported graph strays from PyTorch beyond its stated tolerance."""


Diff = Callable[[Sequence[NDArray[Any]], Sequence[NDArray[Any]]], float]
DIFFS: dict[str, Diff] = {"abs": max_abs_diff, "rel": max_rel_diff, "rms": rms_rel_diff}
DESCRIBE = {
    "abs": "max abs difference",
    "rel": "max difference over the output's max |value|",
    "rms": "RMS difference over the output's RMS",
}


def check_parity(name: str, diff: float, limit: float, metric: str = "abs") -> float:
    """``diff`` when within ``limit``, else ParityError naming the metric (``DIFFS``)."""
    if not diff <= limit:
        raise ParityError(f"{name}: {DESCRIBE[metric]} {diff:.3g} exceeds tolerance {limit:.3g}")
    return diff


def graph_diff(
    spec: GraphSpec,
    precision: str,
    expected: Sequence[NDArray[Any]],
    actual: Sequence[NDArray[Any]],
) -> float:
    """The difference ``spec`` judges ``precision`` by (GraphSpec.tolerance)."""
    _, metric = spec.tolerance(precision)
    return DIFFS[metric](expected, actual)


def check_graph(
    spec: GraphSpec,
    precision: str,
    expected: Sequence[NDArray[Any]],
    actual: Sequence[NDArray[Any]],
) -> float:
    """``graph_diff`` checked against the spec's limit for ``precision``."""
    limit, metric = spec.tolerance(precision)
    diff = graph_diff(spec, precision, expected, actual)
    return check_parity(f"{spec.name} {precision}", diff, limit, metric)


# ------------------------------------------------------------------ tied weights


def tie_transposed_weights(model: Any) -> int:
    """Store a tied output projection once: ``MatMul(x, Wt)`` whose initializer ``Wt`` is exactly
    the transpose of another initializer ``W`` (an LM head tied to the token embeddings, which
    the exporter's constant folding turned into a second, transposed copy) becomes
    ``Gemm(x, W, transB=1)`` over the same ``W`` the embedding's Gather reads, with ``x``
    flattened to 2-D and the result reshaped back. Edits ``model`` (an onnx.ModelProto); returns
    the bytes of the initializers it dropped.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_shape: dict[tuple[int, ...], list[Any]] = {}
    for init in graph.initializer:
        if len(init.dims) == 2:
            by_shape.setdefault(tuple(init.dims), []).append(init)
    nodes: list[Any] = []
    dropped: set[str] = set()
    for node in graph.node:
        source = _transposed_source(node, inits, by_shape)
        if source is None:
            nodes.append(node)
            continue
        x, (out,) = node.input[0], node.output
        k, n = inits[node.input[1]].dims
        p = f"{node.name or out}/tied"
        consts = {
            f"{p}/flat_shape": np.array([-1, k], np.int64),
            f"{p}/zero": np.array([0], np.int64),
            f"{p}/minus_one": np.array([-1], np.int64),
            f"{p}/n": np.array([n], np.int64),
        }
        graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in consts.items())
        nodes += [
            helper.make_node("Shape", [x], [f"{p}/shape"]),
            helper.make_node("Slice", [f"{p}/shape", f"{p}/zero", f"{p}/minus_one"], [f"{p}/lead"]),
            helper.make_node("Concat", [f"{p}/lead", f"{p}/n"], [f"{p}/out_shape"], axis=0),
            helper.make_node("Reshape", [x, f"{p}/flat_shape"], [f"{p}/flat"]),
            helper.make_node("Gemm", [f"{p}/flat", source.name], [f"{p}/gemm"], transB=1),
            helper.make_node("Reshape", [f"{p}/gemm", f"{p}/out_shape"], [out]),
        ]
        dropped.add(node.input[1])
    used = {i for node in nodes for i in node.input}
    saved = 0
    for name in dropped - used:
        saved += numpy_helper.to_array(inits[name]).nbytes
        graph.initializer.remove(inits[name])
    del graph.node[:]
    graph.node.extend(nodes)
    return saved


def _transposed_source(
    node: Any, inits: Mapping[str, Any], by_shape: Mapping[tuple[int, ...], list[Any]]
) -> Any | None:
    """The initializer whose transpose ``node``'s constant right operand is, if any."""
    from onnx import numpy_helper

    if node.op_type != "MatMul" or node.input[1] not in inits:
        return None
    weight = inits[node.input[1]]
    if len(weight.dims) != 2:
        return None
    k, n = weight.dims
    candidates = [c for c in by_shape.get((n, k), []) if c.name != weight.name]
    if not candidates:
        return None
    transposed = numpy_helper.to_array(weight).T
    for candidate in candidates:
        if candidate.data_type != weight.data_type:
            continue
        array = numpy_helper.to_array(candidate)
        # the first rows decide cheaply for unrelated weights; equal ones are compared in full
        if np.array_equal(array[:8], transposed[:8]) and np.array_equal(array, transposed):
            return candidate
    return None


def untie_for_quantization(model: Any) -> int:
    """The inverse for quantizers, which rewrite MatMul only: each ``Gemm(x, W, transB=1)`` that
    ``tie_transposed_weights`` wrote becomes ``MatMul(x, Wt)`` over a transposed copy, which the
    quantizer then replaces by its int8 form (the fp32 ``W`` stays for the Gather). Returns the
    count of Gemms rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    count = 0
    for index, node in enumerate(graph.node):
        if not (node.op_type == "Gemm" and node.output[0].endswith("/tied/gemm")):
            continue
        weight = inits[node.input[1]]
        name = f"{weight.name}.transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), name)
            graph.initializer.append(inits[name])
        matmul = helper.make_node("MatMul", [node.input[0], name], list(node.output), node.name)
        graph.node.remove(node)
        graph.node.insert(index, matmul)
        count += 1
    return count
