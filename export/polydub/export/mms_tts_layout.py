"""Rewrite an exported VITS graph's 1-D convolutions as 2-D ones of height 1 (same numbers).

Why: onnxruntime's CPU provider runs a 1-D ``Conv`` as im2col + GEMM, one batch row at a time,
while its NCHWc layout transformer (graph optimisation level "all", Triton's default) turns 2-D
convolutions into blocked direct convolutions that use the vector units far better and run a
whole batch at once. VITS spends about three quarters of its time in the HiFi-GAN decoder's
convolutions (``Conv`` 75 % and ``ConvTranspose`` 4 % of the kernel time at MMS dimensions), so
the rewrite is what makes a row cheaper and a batch of rows cheaper than the rows one by one.

Each ``Conv`` / ``ConvTranspose`` whose weight is a 3-D initializer becomes
``Unsqueeze(axis 2) -> Conv2D [O, I, 1, k] -> Squeeze(axis 2)``; kernel, stride, dilation,
padding and output padding gain a leading 1 (or 0). The graph's inputs and outputs are unchanged
and the exporter checks the rewritten graph's parity with PyTorch as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

AXES = "conv2d_height_axis"
_LEADING = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0}


def conv1d_as_conv2d(path: Path) -> int:
    """Rewrite the graph at ``path`` in place; returns the number of convolutions rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    widened: dict[str, str] = {}  # 3-D weight -> its 4-D copy (a weight may be shared)
    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain or weight is None:
            nodes.append(node)
            continue
        if len(weight.dims) != 3:
            nodes.append(node)
            continue
        if weight.name not in widened:
            array = numpy_helper.to_array(weight)[:, :, np.newaxis, :]
            widened[weight.name] = f"{weight.name}_2d"
            graph.initializer.append(numpy_helper.from_array(array, widened[weight.name]))
        count += 1
        source, result = node.input[0], node.output[0]
        source_2d, result_2d = f"{source}_2d_{count}", f"{result}_2d"
        attributes = {a.name: _widen(a.name, helper.get_attribute_value(a)) for a in node.attribute}
        inputs = [source_2d, widened[weight.name], *node.input[2:]]
        nodes.append(helper.make_node("Unsqueeze", [source, AXES], [source_2d]))
        nodes.append(helper.make_node(node.op_type, inputs, [result_2d], node.name, **attributes))
        nodes.append(helper.make_node("Squeeze", [result_2d, AXES], [result]))
    if not count:
        return 0
    used = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), AXES))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return count


def _widen(name: str, value: Any) -> Any:
    if name in _LEADING:
        return [_LEADING[name], *value]
    if name == "pads":  # [begin, end] -> [top, begin, bottom, end]
        return [0, value[0], 0, value[1]]
    return value
