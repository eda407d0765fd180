"""Token embeddings stored in 8 bits: the one large table that int8 quantization of MatMul/Gemm
leaves in fp32.

NLLB-200's shared embedding is 256206 x 1024: 1.05 GB in fp32, held once by the encoder and once
by the decoder (issue 17: served NLLB-600M was 2.7 GB on disk, 3.15 GB resident, against 0.62 GB
for CTranslate2 int8). Looked up, not multiplied, it is read one row per token, so an 8-bit copy
with a scale and zero point per block of a row costs nothing measurable in speed and keeps each
row within about one quantization step (1/255 of its block's range) of its fp32 values.

onnxruntime's ``GatherBlockQuantized`` (com.microsoft; uint8 on the CPU provider since 1.22)
does the lookup and the dequantization in one node.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from numpy.typing import NDArray

MS_DOMAIN = "com.microsoft"
BLOCK_SIZE = 32  # values per scale and zero point along a row; the op wants a power of 2 >= 16
MIN_BLOCK = 16
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}


def block_for(width: int, largest: int = BLOCK_SIZE) -> int | None:
    """The largest power-of-two block <= ``largest`` that divides ``width`` (None: none does)."""
    block = largest
    while block >= MIN_BLOCK:
        if width % block == 0:
            return block
        block //= 2
    return None


def quantize_rows(
    table: NDArray[np.float32], block: int, rows_per_pass: int = 8192
) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.uint8]]:
    """Asymmetric uint8 per block of ``block`` values of each row: (q, scales, zero points),
    value = (q - zero_point) * scale. Scales and zero points are [rows, width / block].
    ``rows_per_pass`` rows at a time: NLLB's table is 1 GB, and whole-table temporaries would
    add several GB to the export's peak."""
    rows, width = table.shape
    q = np.empty((rows, width), np.uint8)
    scales = np.empty((rows, width // block), np.float32)
    zero_points = np.empty((rows, width // block), np.uint8)
    for start in range(0, rows, rows_per_pass):
        part = slice(start, min(start + rows_per_pass, rows))
        blocks = table[part].reshape(-1, width // block, block)
        low = np.minimum(blocks.min(axis=-1), 0.0)  # 0 stays exact: padding rows are all zeros
        high = np.maximum(blocks.max(axis=-1), 0.0)
        scale = ((high - low) / 255.0).astype(np.float32)
        scale[scale == 0] = 1.0  # an all-zero block
        zero = np.clip(np.round(-low / scale), 0, 255)
        values = np.round(blocks / scale[..., None]) + zero[..., None]
        q[part] = np.clip(values, 0, 255).astype(np.uint8).reshape(-1, width)
        scales[part], zero_points[part] = scale, zero.astype(np.uint8)
    return q, scales, zero_points


def dequantize_rows(
    q: NDArray[np.uint8], scales: NDArray[np.float32], zero_points: NDArray[np.uint8], block: int
) -> NDArray[np.float32]:
    """The inverse of ``quantize_rows`` (what the node computes for a looked-up row)."""
    rows, width = q.shape
    blocks = q.reshape(rows, width // block, block).astype(np.float32)
    values = (blocks - zero_points[..., None].astype(np.float32)) * scales[..., None]
    return values.reshape(rows, width).astype(np.float32)


def quantize_token_embeddings(model: Any, block_size: int = BLOCK_SIZE) -> int:
    """Rewrite, in place, every Gather that looks a graph input (or a reshape of one) up in a
    2-D fp32 initializer read by nothing else (token ids into their embedding; computed position
    ids and shared tables are left alone) as a uint8 ``GatherBlockQuantized``. Returns the bytes
    saved."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    graph_inputs = {value.name for value in graph.input}
    producers = {output: node for node in graph.node for output in node.output}

    def from_input(name: str) -> bool:
        """``name`` is a graph input, or one reshaped (the encoder views its ids first)."""
        while name not in graph_inputs:
            node = producers.get(name)
            if node is None or node.op_type not in RESHAPES:
                return False
            name = node.input[0]
        return True

    initializers = {tensor.name: tensor for tensor in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    saved = 0
    for node in graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        table_name, ids = node.input[0], node.input[1]
        table = initializers.get(table_name)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            not from_input(ids)
            or table is None
            or table.data_type != TensorProto.FLOAT
            or len(table.dims) != 2
            or axis != 0
            or readers[table_name] != 1
        ):
            continue
        block = block_for(int(table.dims[1]), block_size)
        if block is None:
            continue
        values = numpy_helper.to_array(table).astype(np.float32)
        q, scales, zero_points = quantize_rows(values, block)
        names = (f"{table_name}_uint8", f"{table_name}_scales", f"{table_name}_zero_points")
        graph.initializer.remove(table)
        arrays: tuple[NDArray[Any], ...] = (q, scales, zero_points)
        for name, array in zip(names, arrays, strict=True):
            graph.initializer.append(numpy_helper.from_array(array, name))
        quantized = helper.make_node(
            "GatherBlockQuantized",
            [names[0], ids, names[1], names[2]],
            list(node.output),
            name=f"{node.name or table_name}/uint8",
            domain=MS_DOMAIN,
            gather_axis=0,
            quantize_axis=1,
            block_size=block,
            bits=8,
        )
        node.CopyFrom(quantized)
        saved += values.nbytes - (q.nbytes + scales.nbytes + zero_points.nbytes)
    if saved and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return saved
