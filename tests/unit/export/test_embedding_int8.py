"""Token embeddings looked up in 8 bits (polydub.export.embedding_int8): the table is rewritten
only where the ids come from the graph's input, onnxruntime's node gives the rows the numpy
dequantization gives, and every value stays within a quantization step of fp32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from polydub.export.embedding_int8 import (
    block_for,
    dequantize_rows,
    quantize_rows,
    quantize_token_embeddings,
)

pytestmark = pytest.mark.unit

VOCAB, DIM = 500, 96  # 96: blocks of 32


def test_block_is_the_largest_power_of_two_dividing_the_width() -> None:
    assert block_for(1024) == 32 and block_for(96) == 32 and block_for(48) == 16
    assert block_for(1024, 64) == 64 and block_for(40) is None


def test_rows_come_back_within_one_step_and_zero_stays_exact() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.05, (VOCAB, DIM)).astype(np.float32)
    table[1] = 0.0  # a padding row
    q, scales, zero_points = quantize_rows(table, 32)
    assert q.dtype == np.uint8 and scales.shape == zero_points.shape == (VOCAB, DIM // 32)
    back = dequantize_rows(q, scales, zero_points, 32)
    step = np.repeat(scales, 32, axis=1)
    assert np.all(np.abs(back - table) <= step * 1.01)
    assert np.all(back[1] == 0.0)
    # done a few rows at a time (the export's memory), the same bytes
    q7, scales7, zero_points7 = quantize_rows(table, 32, rows_per_pass=7)
    assert np.array_equal(q7, q) and np.array_equal(scales7, scales)
    assert np.array_equal(zero_points7, zero_points)


def _graph(table: NDArray[np.float32], shared: NDArray[np.float32]) -> onnx.ModelProto:
    """Token ids (reshaped, as M2M100's encoder does) into ``table``; computed position ids into
    a position table; ids into ``shared``, which a MatMul reads too."""
    nodes = [
        helper.make_node("Reshape", ["ids", "shape"], ["ids2"]),
        helper.make_node("Gather", ["table", "ids2"], ["tokens"]),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["length"]),
        helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
        helper.make_node("Gather", ["position_table", "positions"], ["pos"]),
        helper.make_node("Add", ["tokens", "pos"], ["embedded"]),
        helper.make_node("Gather", ["shared", "ids2"], ["shared_rows"]),
        helper.make_node("MatMul", ["embedded", "shared_t"], ["logits"]),
        helper.make_node("MatMul", ["shared_rows", "shared_square"], ["other"]),
        helper.make_node("MatMul", ["shared", "shared_square"], ["uses_shared"]),
    ]
    rng = np.random.default_rng(1)
    initializers = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(shared, "shared"),
        numpy_helper.from_array(np.ascontiguousarray(table.T), "shared_t"),
        numpy_helper.from_array(rng.normal(0, 1, (DIM, DIM)).astype(np.float32), "shared_square"),
        numpy_helper.from_array(rng.normal(0, 1, (64, DIM)).astype(np.float32), "position_table"),
        numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "s"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            for name in ("logits", "other", "uses_shared")
        ],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_only_the_token_table_read_by_its_gather_alone_is_rewritten() -> None:
    rng = np.random.default_rng(2)
    table = rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32)
    shared = rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32)
    model = _graph(table, shared)
    fp32 = ort.InferenceSession(model.SerializeToString())

    saved = quantize_token_embeddings(model)
    blocks = VOCAB * DIM // 32
    assert saved == table.nbytes - (VOCAB * DIM + blocks * 4 + blocks)  # uint8, scales, zero points
    kinds = {n.output[0]: n.op_type for n in model.graph.node}
    assert kinds["tokens"] == "GatherBlockQuantized"
    assert kinds["pos"] == "Gather"  # computed ids: left alone
    assert kinds["shared_rows"] == "Gather"  # a MatMul reads the table too: left alone
    names = {t.name for t in model.graph.initializer}
    assert "table" not in names and {"shared", "position_table"} <= names

    quantized = ort.InferenceSession(model.SerializeToString())
    ids = np.array([[3, 17, 499, 0, 250]], dtype=np.int64)
    want = fp32.run(["logits"], {"ids": ids})[0]
    got = quantized.run(["logits"], {"ids": ids})[0]
    assert np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2)) < 0.01
    # the node's rows are exactly numpy's dequantization of the same table
    q, scales, zero_points = quantize_rows(table, 32)
    rows = dequantize_rows(q, scales, zero_points, 32)[ids[0]]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("tokens", TensorProto.FLOAT, None))
    tokens = ort.InferenceSession(probe.SerializeToString()).run(["tokens"], {"ids": ids})[0]
    np.testing.assert_allclose(tokens.reshape(rows.shape), rows, rtol=1e-6, atol=1e-7)
