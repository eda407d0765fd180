"""Generic ONNX steps: relative tolerances, tied embeddings stored once, and which int8 recipe
gives a row the same result whatever else is in its batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from polydub.export.onnx_tools import (
    ParityError,
    check_graph,
    graph_diff,
    max_abs_diff,
    max_rel_diff,
    quantize_int8,
    quantize_weights_int8,
    rms_rel_diff,
    run_onnx,
    tie_transposed_weights,
    untie_for_quantization,
)
from polydub.export.spec import GraphSpec, TensorSpec

pytestmark = pytest.mark.unit

VOCAB, DIM = 300, 64


def _spec(**tolerances: float | None) -> GraphSpec:
    return GraphSpec(
        name="g",
        inputs=(TensorSpec("x", "float32", ("batch", DIM)),),
        outputs=(TensorSpec("y", "float32", ("batch", DIM)),),
        **tolerances,  # type: ignore[arg-type]
    )


def test_relative_tolerance_follows_each_outputs_scale() -> None:
    rng = np.random.default_rng(0)
    small = rng.standard_normal(100)
    large = 30 * rng.standard_normal(100)
    expected = [small, large]
    actual = [small + 1e-3, large * (1 + 1e-3)]  # 0.1% of each output's own scale, at most
    assert max_abs_diff(expected, actual) > 1e-2  # an absolute limit would have to be loose
    assert max_rel_diff(expected, actual) == pytest.approx(1e-3, rel=1e-2)

    relative = _spec(fp32_atol=None, fp32_rtol=2e-3)
    assert relative.tolerance("fp32") == (2e-3, "rel")
    assert check_graph(relative, "fp32", expected, actual) == graph_diff(
        relative, "fp32", expected, actual
    )
    absolute = _spec(fp32_atol=2e-3)
    assert absolute.tolerance("fp32") == (2e-3, "abs") and absolute.tolerance("int8")[1] == "abs"
    with pytest.raises(ParityError, match="max abs difference"):
        check_graph(absolute, "fp32", expected, actual)
    with pytest.raises(ParityError, match="over the output's max"):
        check_graph(relative, "fp32", expected, [small, 1.01 * large])
    for both_or_none in ({"int8_rtol": 0.1}, {"fp32_atol": None}):
        with pytest.raises(ValueError, match="set exactly one"):
            _spec(**both_or_none)


def test_rms_tolerance_weighs_the_whole_output_not_its_worst_element() -> None:
    rng = np.random.default_rng(4)
    signal = rng.standard_normal(10_000)
    outlier = signal.copy()
    outlier[7] += 0.5 * np.abs(signal).max()  # one element moves by half the range
    spread = signal * 1.05  # every element 5% off
    assert max_rel_diff([signal], [outlier]) == pytest.approx(0.5)
    assert rms_rel_diff([signal], [outlier]) < 0.025
    assert rms_rel_diff([signal], [spread]) == pytest.approx(0.05)
    spec = _spec(int8_atol=None, int8_rms_rtol=0.1)
    assert spec.tolerance("int8") == (0.1, "rms")
    assert check_graph(spec, "int8", [signal], [outlier]) < 0.025
    with pytest.raises(ParityError, match="RMS difference over the output's RMS"):
        check_graph(spec, "int8", [signal], [signal * 1.2])


def _tied_lm(path: Path) -> tuple[NDArray[np.float32], int]:
    """Gather(embedding) -> MatMul with the embedding's transpose as its own initializer: what
    torch's constant folding writes for an LM head tied to the embeddings (3-D activations)."""
    rng = np.random.default_rng(1)
    embedding = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["x"]),
        helper.make_node("MatMul", ["x", "embed_t"], ["logits"], name="lm_head"),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "len"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "len", VOCAB])],
        [
            numpy_helper.from_array(embedding, "embed"),
            numpy_helper.from_array(embedding.T.copy(), "embed_t"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return embedding, embedding.nbytes


def _float_inits(path: Path) -> list[tuple[int, ...]]:
    model = onnx.load(str(path))
    return [tuple(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT]


def test_tied_embedding_is_stored_once_and_computes_the_same(tmp_path: Path) -> None:
    source = tmp_path / "untied.onnx"
    _, nbytes = _tied_lm(source)
    model = onnx.load(str(source))
    assert tie_transposed_weights(model) == nbytes
    tied = tmp_path / "tied.onnx"
    onnx.save(model, str(tied))
    assert _float_inits(source).count((VOCAB, DIM)) + _float_inits(source).count((DIM, VOCAB)) == 2
    assert [s for s in _float_inits(tied) if VOCAB in s] == [(VOCAB, DIM)]
    assert tied.stat().st_size < source.stat().st_size - 0.9 * nbytes
    assert "Gemm" in {n.op_type for n in onnx.load(str(tied)).graph.node}
    feeds = {"ids": np.array([[1, 5, 299], [0, 7, 7]], np.int64)}
    assert max_abs_diff(run_onnx(source, feeds), run_onnx(tied, feeds)) == 0.0
    assert tie_transposed_weights(onnx.load(str(tied))) == 0  # nothing left to tie

    # Quantizers rewrite MatMul only: the tied head is untied for them and quantized too.
    untied = onnx.load(str(tied))
    assert untie_for_quantization(untied) == 1
    for quantize, op in (
        (quantize_int8, "MatMulInteger"),
        (quantize_weights_int8, "MatMulNBits"),
    ):
        out = quantize(tied, tmp_path / f"{op}.onnx")
        graph = onnx.load(str(out)).graph
        assert op in {n.op_type for n in graph.node}, op
        assert [s for s in _float_inits(out) if DIM in s] == [(VOCAB, DIM)]  # the Gather's
        assert max_rel_diff(run_onnx(tied, feeds), run_onnx(out, feeds)) < 0.05


def _linear(path: Path) -> NDArray[np.float32]:
    rng = np.random.default_rng(2)
    weight = (rng.standard_normal((DIM, DIM)) / 8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weight


@pytest.mark.parametrize("accuracy_level", [None, 4])
def test_weight_only_int8_is_batch_invariant_where_dynamic_int8_is_not(
    tmp_path: Path, accuracy_level: Any
) -> None:
    """A row next to a loud row: dynamic int8 quantizes the whole batch with the loud row's
    scale, weight-only int8 (per-row activations, if any) leaves the quiet row as it was."""
    source = tmp_path / "linear.onnx"
    weight = _linear(source)
    rng = np.random.default_rng(3)
    quiet = rng.standard_normal((1, DIM)).astype(np.float32)
    batch = np.concatenate([quiet, 200 * rng.standard_normal((3, DIM)).astype(np.float32)])
    weight_only = quantize_weights_int8(
        source, tmp_path / "w8.onnx", block_size=32, accuracy_level=accuracy_level
    )
    dynamic = quantize_int8(source, tmp_path / "dynamic.onnx")

    def row0(path: Path, x: NDArray[np.float32]) -> NDArray[Any]:
        out: NDArray[Any] = run_onnx(path, {"x": x})[0][0]
        return out

    # fp32 compute (None) may pick another kernel for one row than for four: float rounding
    # only, as the fp32 graph itself; int8 compute (4) is bit-identical.
    alone, together = row0(weight_only, quiet), row0(weight_only, batch)
    assert max_rel_diff([alone], [together]) < 1e-5
    assert accuracy_level is None or np.array_equal(alone, together)
    assert max_rel_diff([quiet[0] @ weight], [alone]) < 0.02
    assert not np.array_equal(row0(dynamic, quiet), row0(dynamic, batch))
    assert max_rel_diff([row0(dynamic, quiet)], [row0(dynamic, batch)]) > 0.02
