"""MMS-TTS export: the exported graph against PyTorch and transformers' VitsModel at fixed noise,
speaking-rate behaviour and configs. Tokenisation is tested in tests/unit/serving, the client's
pool / fitting logic in tests/unit/orchestrator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from polydub.errors import InvalidInput
from polydub.export.mms_tts import (
    DEFAULT_LANGUAGES,
    LICENSE,
    TOKENIZER_MODEL,
    MmsTtsExporter,
    build_tiny,
    model_name,
)
from polydub.export.mms_tts_configs import render_config
from polydub.export.mms_tts_graph import (
    FP32_ATOL,
    INPUT_NAMES,
    OUTPUT_NAMES,
    VitsSynthesizer,
    fold_weight_norm,
    gaussian_noise,
)
from polydub.export.mms_tts_int8 import place_int8, spectral_distance
from polydub.export.mms_tts_reference import example_feeds, hf_reference, run_torch
from polydub.export.onnx_tools import max_abs_diff
from polydub.export.spec import ExportReport
from polydub.orchestrator.inference.tts import (
    predicted_frames,
    request_inputs,
)
from polydub.serving.tts_tokenizer import TtsTokenizer
from tests.checkout import TEMPLATES
from tests.unit.tiny_exports import TTS_HOP, TTS_LANGUAGE, TTS_MODEL, run_tts_onnx, tts_onnx_path

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def synthesizer() -> tuple[Any, VitsSynthesizer]:
    model, _ = build_tiny(TTS_LANGUAGE)  # same seed as the export: same weights
    fold_weight_norm(model)
    return model, VitsSynthesizer(model).eval()


# ---------------------------------------------------------------------------------- noise


def test_noise_is_a_deterministic_standard_normal_per_seed() -> None:
    seeds = torch.tensor([[0], [1]])
    noise = gaussian_noise(seeds, 2, 8, 4000).numpy()
    assert noise.shape == (2, 8, 4000)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1.0) < 0.02
    assert np.array_equal(noise, gaussian_noise(seeds, 2, 8, 4000).numpy())
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.02
    # A prefix does not depend on how long the tensor is (padding-independent).
    assert np.array_equal(noise[:, :, :100], gaussian_noise(seeds, 2, 8, 100).numpy())


# ---------------------------------------------------------------------------------- graph


def test_export_writes_model_configs_and_tokenizers(tts_export: tuple[Path, ExportReport]) -> None:
    repository, report = tts_export
    assert report.models == [TOKENIZER_MODEL, TTS_MODEL]
    assert report.max_abs_diff[TTS_MODEL] <= FP32_ATOL
    assert tts_onnx_path(repository).is_file()
    assert not (repository / TTS_MODEL / "1" / "model_int8.onnx").exists()
    assert (repository / TTS_MODEL / "config.pbtxt").read_text() == render_config(TTS_LANGUAGE)
    assert (repository / TTS_MODEL / "tokenizer" / "vocab.json").is_file()
    assert (repository / TOKENIZER_MODEL / "1" / "model.py").is_file()
    assert any(LICENSE in note for note in report.notes)
    assert report.precision[TTS_MODEL] == "int8 vocoder"
    # 3 upsampling stages of the tiny vocoder's 4 (the last stays fp32) x 4 convolutions
    assert any("int8 vocoder served on CPU: 12 residual" in note for note in report.notes)


def test_served_graph_matches_pytorch_up_to_its_int8_vocoder(
    tts_export: tuple[Path, ExportReport], tts_spec: TtsTokenizer, synthesizer: tuple[Any, Any]
) -> None:
    """Everything before the vocoder is fp32, so lengths and durations are PyTorch's; the int8
    vocoder moves the spectrum less than another seed does (the fp32 graph's own parity is the
    export's check: report.max_abs_diff above)."""
    texts = ["The quick brown fox jumps.", "Over the lazy dog", "hi"]
    feeds = example_feeds(tts_spec, texts, [1.0, 1.25, 0.8], [1, 2, 3])
    feeds["noise_scale_duration"] *= 0.0  # so that another seed keeps the lengths
    expected = run_torch(synthesizer[1], feeds)
    other_seed = run_torch(synthesizer[1], {**feeds, "seed": feeds["seed"] + 10})
    assert np.array_equal(expected[1], other_seed[1])
    actual = run_tts_onnx(tts_onnx_path(tts_export[0]), feeds, OUTPUT_NAMES)
    assert np.array_equal(expected[1], actual[1])  # identical lengths
    assert max_abs_diff([expected[2]], [actual[2]]) <= FP32_ATOL  # durations
    assert actual[0].dtype == np.float32 and actual[1].dtype == np.int64
    for row in range(len(texts)):
        n = int(actual[1][row, 0])
        ours = spectral_distance(expected[0][row, :n], actual[0][row, :n])
        seed = spectral_distance(expected[0][row, :n], other_seed[0][row, :n])
        assert ours < seed, f"row {row}: int8 moved the spectrum {ours:.2f} dB, a seed {seed:.2f}"


def test_synthesizer_matches_transformers_vits_model(
    tts_spec: TtsTokenizer, synthesizer: tuple[Any, Any]
) -> None:
    model, synth = synthesizer
    feeds = example_feeds(tts_spec, ["Testing transformers parity"], [0.5], [42])
    reference, length = hf_reference(model, feeds, 0)
    ours = run_torch(synth, feeds)
    assert length == int(ours[1][0, 0])
    assert max_abs_diff([reference], [ours[0][0, :length]]) <= 1e-4


def test_length_scale_scales_duration_monotonically(
    tts_export: tuple[Path, ExportReport], tts_spec: TtsTokenizer
) -> None:
    ids = tts_spec.encode("A sentence long enough to average the rounding of each token.")
    lengths = []
    for scale in (0.5, 1.0, 1.5, 2.0):
        out = run_tts_onnx(tts_onnx_path(tts_export[0]), request_inputs(ids, scale, 0.667, 0.8, 5))
        lengths.append(int(out[1][0, 0]))
        assert lengths[-1] == predicted_frames(out[2][0, : len(ids)], scale) * TTS_HOP  # exact
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    assert 1.7 <= lengths[3] / lengths[1] <= 2.1  # length_scale 2.0 gives ~2x samples


def test_a_row_is_the_same_alone_and_in_a_padded_batch(
    tts_export: tuple[Path, ExportReport], tts_spec: TtsTokenizer
) -> None:
    path = tts_onnx_path(tts_export[0])
    batch = example_feeds(
        tts_spec, ["short", "a much longer sentence than that"], [1.0, 1.0], [9, 8]
    )
    together = run_tts_onnx(path, batch, OUTPUT_NAMES)
    alone = run_tts_onnx(path, example_feeds(tts_spec, ["short"], [1.0], [9]), OUTPUT_NAMES)
    n = int(alone[1][0, 0])
    assert int(together[1][0, 0]) == n
    assert max_abs_diff([alone[0][0, :n]], [together[0][0, :n]]) <= 1e-4


def test_served_graph_runs_every_convolution_as_2d(tts_export: tuple[Path, ExportReport]) -> None:
    import onnx

    graph = onnx.load(str(tts_onnx_path(tts_export[0]))).graph
    weights = {i.name: len(i.dims) for i in graph.initializer}
    # An int8 convolution's weight comes through a DequantizeLinear of the int8 initializer.
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) > 10 and all(weights[n.input[1]] == 4 for n in convs)
    assert any(f"{len(convs)} convolutions served as 2-D" in n for n in tts_export[1].notes)


def test_seed_and_noise_scale_change_the_speech(
    tts_export: tuple[Path, ExportReport], tts_spec: TtsTokenizer
) -> None:
    path = tts_onnx_path(tts_export[0])
    ids = tts_spec.encode("seeded speech")
    a = run_tts_onnx(path, request_inputs(ids, 1.0, 0.667, 0.8, 1))
    b = run_tts_onnx(path, request_inputs(ids, 1.0, 0.667, 0.8, 1))
    c = run_tts_onnx(path, request_inputs(ids, 1.0, 0.667, 0.8, 2))
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[2], c[2])  # other duration noise
    quiet = run_tts_onnx(path, request_inputs(ids, 1.0, 0.0, 0.0, 1))
    again = run_tts_onnx(path, request_inputs(ids, 1.0, 0.0, 0.0, 2))
    assert np.array_equal(quiet[0], again[0])  # no noise: the seed no longer matters


# ---------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("language", DEFAULT_LANGUAGES)
def test_committed_configs_are_the_rendered_template(language: str) -> None:
    folder = TEMPLATES / model_name(language)
    for path, gpu in ((folder / "config.pbtxt", False), (folder / "configs" / "gpu.pbtxt", True)):
        assert path.read_text() == render_config(language, gpu=gpu)
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == model_name(language)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
        assert [i.name for i in config.input] == list(INPUT_NAMES)
        assert [o.name for o in config.output] == list(OUTPUT_NAMES)
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size > 0 and policy.timeout_action == policy.REJECT
        kind = config.instance_group[0].kind
        assert kind == (
            model_config_pb2.ModelInstanceGroup.KIND_GPU
            if gpu
            else model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == (["tensorrt"] if gpu else [])


def test_tokenizer_model_config_is_a_python_model() -> None:
    text = (TEMPLATES / TOKENIZER_MODEL / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 0
    assert [i.name for i in config.input] == ["language"]


def test_unknown_language_in_export_list_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="supported: "):
        MmsTtsExporter(languages=("xyz",))


def test_a_graph_that_cannot_be_quantized_stays_fp32_and_leaves_nothing(
    tmp_path: Path, tts_spec: TtsTokenizer
) -> None:
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])
    out = helper.make_tensor_value_info("waveform", TensorProto.INT64, [1, None])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["waveform"])], "g", [ids], [out]
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    before = path.read_bytes()

    verdict = place_int8("mms_tts_xxx", path, tts_spec)
    assert not verdict.accepted
    assert "no vocoder residual convolutions" in verdict.error
    assert "fp32 served on CPU" in verdict.note("mms_tts_xxx")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
