"""Every committed Triton config against what serves it: a graph model's inputs and outputs
(names, dtypes, fixed dims) against its exporter's GraphSpec, a python model's against the tensor
names of ``polydub.serving.names``. A renamed tensor or a changed axis fails here, not in Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from polydub.export import diarization, gender, htdemucs, separation, vad
from polydub.export.mms_tts_graph import graph_spec
from polydub.export.spec import GraphSpec, TensorSpec
from polydub.serving import names
from tests.checkout import TEMPLATES

pytestmark = pytest.mark.unit

# The graph served by each Triton model that is an ONNX graph (mms_tts_<iso3>: graph_spec).
GRAPHS: dict[str, GraphSpec] = {
    spec.name: spec
    for spec in (
        vad.SPEC,
        gender.SPEC,
        separation.SPEC,
        htdemucs.SPEC,
        diarization.SEGMENTATION_SPEC,
        diarization.EMBEDDING_SPEC,
    )
}
# Graphs whose inputs and outputs the committed configs leave to Triton's auto-complete.
AUTO_COMPLETED = {names.SEPARATION_HTDEMUCS}
DTYPES = {
    "float32": model_config_pb2.TYPE_FP32,
    "int64": model_config_pb2.TYPE_INT64,
    "int32": model_config_pb2.TYPE_INT32,
}
CONFIGS = sorted(
    path.relative_to(TEMPLATES)
    for pattern in ("*/config.pbtxt", "*/configs/*.pbtxt")
    for path in TEMPLATES.glob(pattern)
)


def _graph(model: str) -> GraphSpec | None:
    if model.startswith(names.MMS_TTS_PREFIX) and model != names.MMS_TTS_TOKENIZER:
        return graph_spec(model.removeprefix(names.MMS_TTS_PREFIX))
    return GRAPHS.get(model)


def _config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _check_tensor(model: str, tensor: Any, spec: TensorSpec, batched: bool) -> None:
    where = f"{model}: {tensor.name}"
    assert tensor.data_type == DTYPES[spec.dtype], f"{where}: data type"
    dims = spec.dims[1:] if batched else spec.dims
    if batched:
        assert spec.dims[0] == "batch", f"{where}: the graph's first axis is not the batch"
    expected = [d if isinstance(d, int) else -1 for d in dims]
    assert list(tensor.dims) == expected, f"{where}: dims {list(tensor.dims)} vs {expected}"


def test_every_config_is_checked() -> None:
    models = {path.parts[0] for path in CONFIGS}
    assert {names.WHISPER, names.NLLB, names.SILERO_VAD, names.mms_tts("eng")} <= models
    unchecked = {m for m in models if m not in names.PYTHON_MODELS and _graph(m) is None}
    assert not unchecked, f"configs nothing checks: {sorted(unchecked)}"


@pytest.mark.parametrize("relative", CONFIGS, ids=str)
def test_config_matches_what_serves_it(relative: Path) -> None:
    model = relative.parts[0]
    config = _config(TEMPLATES / relative)
    assert config.name in ("", model)
    if model in names.PYTHON_MODELS:
        inputs, outputs = names.PYTHON_MODELS[model]
        assert config.backend == "python"
        assert [i.name for i in config.input] == list(inputs)
        assert [o.name for o in config.output] == list(outputs)
        return
    spec = _graph(model)
    assert spec is not None and spec.name == model
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
    if model in AUTO_COMPLETED:  # a per-checkpoint fixed shape: Triton reads it from the graph
        assert not config.input and not config.output
        return
    # Inputs: all of them, in the graph's order; outputs: those the clients read.
    assert [i.name for i in config.input] == [t.name for t in spec.inputs]
    graph_outputs = {t.name: t for t in spec.outputs}
    assert {o.name for o in config.output} <= set(graph_outputs)
    declared: Sequence[tuple[Any, TensorSpec]] = [
        *zip(config.input, spec.inputs, strict=True),
        *((o, graph_outputs[o.name]) for o in config.output),
    ]
    for tensor, tensor_spec in declared:
        _check_tensor(model, tensor, tensor_spec, batched=True)


def test_a_renamed_tensor_is_caught() -> None:
    """The check itself: a config that names a tensor the graph lacks fails it."""
    spec = diarization.SEGMENTATION_SPEC
    config = _config(TEMPLATES / spec.name / "config.pbtxt")
    config.input[0].name = "ids"
    assert [i.name for i in config.input] != [t.name for t in spec.inputs]
    config.input[0].name = spec.inputs[0].name
    config.input[0].dims[:] = [4]
    with pytest.raises(AssertionError, match="dims"):
        _check_tensor(spec.name, config.input[0], spec.inputs[0], batched=True)
