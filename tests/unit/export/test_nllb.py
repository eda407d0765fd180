"""NLLB-200 export (tiny preset): tokenizer, graph parity and configs.

One tiny model (random weights, fixed seed, offline tokenizer) is built and exported once for
the session (tests/unit/conftest.py); its PyTorch original is the reference for every check. The
search the BLS model runs on these graphs is tested in tests/unit/serving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from polydub.export import nllb, nllb_reference
from polydub.export.nllb import NllbExporter
from polydub.export.nllb_graphs import (
    BLS,
    DECODER,
    ENCODER,
    FP32_ATOL,
    INT8_RTOL,
    decoder_spec,
    encoder_spec,
)
from polydub.export.onnx_tools import max_abs_diff, run_onnx
from polydub.export.registry import get_family
from polydub.export.spec import Preset, Target
from polydub.languages import LANGUAGES
from polydub.serving import nllb_search, nllb_translate
from polydub.serving.names import layer_tensors
from polydub.serving.nllb_service import PARAMETERS, TOKENIZER_DIR
from tests.checkout import TEMPLATES
from tests.unit.tiny_exports import NLLB_SENTENCES, TinyNllb, nllb_batch

pytestmark = pytest.mark.unit


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_has_every_language_code_as_one_special_token(tiny_nllb: TinyNllb) -> None:
    codec = nllb_translate.NllbCodec(tiny_nllb.repository / BLS / "1" / TOKENIZER_DIR)
    vocab = tiny_nllb.tokenizer.get_vocab()
    ids = {lang.nllb: codec.language_id(lang.nllb) for lang in LANGUAGES.values()}
    assert all(vocab[code] == token_id for code, token_id in ids.items())
    assert len(set(ids.values())) == len(ids)
    assert all(code in tiny_nllb.tokenizer.additional_special_tokens for code in ids)
    # The fairseq layout of the real checkpoints: <s> <pad> </s> <unk> first.
    assert tiny_nllb.tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [
        0,
        1,
        2,
        3,
    ]
    assert len(tiny_nllb.tokenizer) == tiny_nllb.model.config.vocab_size


# ----------------------------------------------------------------------------- export & parity


def test_export_report_and_files(tiny_nllb: TinyNllb) -> None:
    report = tiny_nllb.report
    # The graphs are files of the python model, which runs them in-process: the Triton models
    # of earlier exports are retired.
    assert report.models == [BLS] and report.retired == [ENCODER, DECODER]
    assert report.max_abs_diff[ENCODER] <= FP32_ATOL and report.max_abs_diff[DECODER] <= FP32_ATOL
    assert report.token_match == {DECODER: True}
    assert set(report.int8_max_abs_diff) == {ENCODER, DECODER}
    assert not (TEMPLATES / ENCODER).exists() and not (TEMPLATES / DECODER).exists()
    for path in (tiny_nllb.encoder_int8, tiny_nllb.decoder_int8):
        served = onnx.load(str(path))
        assert "DynamicQuantizeLinear" in {n.op_type for n in served.graph.node}  # int8 on CPU
    version = tiny_nllb.repository / BLS / "1"
    for name in (
        "model.py",
        "encoder.onnx",
        "decoder.onnx",
        "encoder_fp32.onnx",
        "decoder_fp32.onnx",
        "tokenizer/tokenizer.json",
        "tokenizer/generation.json",
    ):
        assert (version / name).is_file(), name
    generation = nllb_search.GenerationConfig.load(version / TOKENIZER_DIR)
    assert generation == tiny_nllb.config
    assert (generation.decoder_layers, generation.decoder_heads, generation.head_dim) == (2, 4, 16)


def test_the_checkpoint_export_lets_the_weights_go_before_placing_the_graphs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At NLLB-3.3B the PyTorch weights are 13 GB that quantizing the graphs does not need:
    ``release_weights`` frees them once the graphs are checked, with the same files placed.
    Each phase is logged with the export's peak memory."""
    model, tokenizer = nllb.build_tiny()
    with caplog.at_level(logging.INFO, logger="polydub.export.memory"):
        report = NllbExporter().export_model(
            model, tokenizer, Target.CPU, tmp_path, "tiny", release_weights=True
        )
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert report.token_match == {DECODER: True}
    assert (tmp_path / BLS / "1" / "decoder.onnx").is_file()
    phases = [r.getMessage() for r in caplog.records if "peak RSS so far" in r.getMessage()]
    assert [p.split(";")[0] for p in phases] == [
        f"nllb export: {phase}"
        for phase in (
            "encoder written",
            "decoder written",
            "decoder tied",
            "graphs checked",
            f"{ENCODER} placed",
            f"{DECODER} placed",
        )
    ]


def test_decoder_stores_the_shared_embedding_once(tiny_nllb: TinyNllb) -> None:
    """lm_head is tied to the embeddings: one fp32 copy in the fp32 decoder (Gather and a Gemm
    read it), where constant folding used to add a transposed one. The int8 graphs (encoder and
    decoder) look tokens up in an 8-bit table (1.05 GB -> 0.3 GB each at NLLB-600M) and the
    decoder's head has its own int8 copy: no fp32 table is left."""
    vocab, d_model = tiny_nllb.model.config.vocab_size, tiny_nllb.model.config.d_model

    def tables(path: Path, data_type: int) -> list[tuple[int, ...]]:
        graph = onnx.load(str(path)).graph
        return [tuple(i.dims) for i in graph.initializer if i.data_type == data_type]

    floats = tables(tiny_nllb.decoder_fp32, onnx.TensorProto.FLOAT)
    assert floats.count((vocab, d_model)) == 1 and (d_model, vocab) not in floats
    for path in (tiny_nllb.encoder_int8, tiny_nllb.decoder_int8):
        floats = tables(path, onnx.TensorProto.FLOAT)
        assert (vocab, d_model) not in floats and (d_model, vocab) not in floats, path
        assert tables(path, onnx.TensorProto.UINT8).count((vocab, d_model)) == 1, path
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert ops.count("GatherBlockQuantized") == 1, path
    ops_fp32 = {n.op_type for n in onnx.load(str(tiny_nllb.decoder_fp32)).graph.node}
    assert "Gemm" in ops_fp32
    saved = f"{vocab * d_model * 4 / 1e6:.1f} MB less"
    assert any(saved in note for note in tiny_nllb.report.notes), tiny_nllb.report.notes


def test_exporter_registry_and_checkpoints() -> None:
    exporter = get_family("nllb")
    assert isinstance(exporter, NllbExporter)
    assert [c.random for c in exporter.defaults(Preset.TINY).values()] == [True]
    (small,) = exporter.defaults(Preset.SMALL).values()
    (large,) = exporter.defaults(Preset.LARGE).values()
    assert (small.ref, large.ref) == (
        "facebook/nllb-200-distilled-600M",
        "facebook/nllb-200-3.3B",
    )
    assert small.license == large.license == "CC-BY-NC-4.0" and not small.gated


def test_encoder_matches_transformers(tiny_nllb: TinyNllb) -> None:
    ids, mask, _ = nllb_batch(tiny_nllb.tokenizer, NLLB_SENTENCES)
    expected = nllb_reference.torch_encoder_outputs(tiny_nllb.model, ids, mask)
    actual = run_onnx(tiny_nllb.encoder_fp32, {"input_ids": ids, "attention_mask": mask})
    assert [a.shape for a in actual] == [e.shape for e in expected]
    assert len(actual) == 1 + 2 * 2  # hidden state, then a key and a value per layer
    assert actual[1].shape == (len(NLLB_SENTENCES), 4, ids.shape[1], 16)
    assert max_abs_diff(expected, actual) <= FP32_ATOL


def test_cached_decoder_steps_match_transformers_full_forward(tiny_nllb: TinyNllb) -> None:
    ids, mask, targets = nllb_batch(tiny_nllb.tokenizer, NLLB_SENTENCES)
    rng = np.random.default_rng(3)
    prefix = rng.integers(4, 700, size=(len(NLLB_SENTENCES), 12)).astype(np.int64)
    prefix[:, 0], prefix[:, 1] = 2, targets  # decoder start, language code
    top_lp, top_ids = nllb_reference.onnx_step_log_probs(
        tiny_nllb.decoder_fp32, tiny_nllb.encoder_fp32, ids, mask, prefix, tiny_nllb.config
    )
    assert top_lp.shape == top_ids.shape == (len(NLLB_SENTENCES), 11, 16)
    # top_log_probs / top_ids of each position are transformers' log_softmax, best first.
    logits = nllb_reference.torch_logits(tiny_nllb.model, ids, mask, prefix)[:, 1:]
    order = np.argsort(-logits.astype(np.float64), axis=-1, kind="stable")[..., :16]
    assert np.array_equal(top_ids, order)
    expected = nllb_reference.torch_log_probs_at(tiny_nllb.model, ids, mask, prefix, top_ids)
    assert max_abs_diff([expected], [top_lp]) <= FP32_ATOL

    # No logits output: the served graph never materialises a vocabulary-wide row per beam.
    feeds = nllb_reference.sample_decoder_feeds(
        tiny_nllb.encoder_fp32, ids, mask, targets, tiny_nllb.config, 0
    )
    graph = onnx.load(str(tiny_nllb.decoder_fp32)).graph
    outputs = [o.name for o in graph.output]
    assert outputs == ["top_log_probs", "top_ids", *layer_tensors("new", 2)]
    _, _, *news = run_onnx(tiny_nllb.decoder_fp32, feeds)
    assert {n.shape for n in news} == {(len(NLLB_SENTENCES), 4, 2, 16)}  # the 2 new positions
    # One tensor per layer: nothing stacks the layers' K/V or slices layers out of a stacked past.
    assert not any(node.op_type == "Gather" and "past" in node.input[0] for node in graph.node)


def test_int8_graphs_within_stated_tolerance(tiny_nllb: TinyNllb) -> None:
    ids, mask, targets = nllb_batch(tiny_nllb.tokenizer, NLLB_SENTENCES)
    feeds = nllb_reference.sample_decoder_feeds(
        tiny_nllb.encoder_fp32, ids, mask, targets, tiny_nllb.config, 5
    )
    for spec, fp32, int8, graph_feeds in (
        (
            encoder_spec(2),
            tiny_nllb.encoder_fp32,
            tiny_nllb.encoder_int8,
            {"input_ids": ids, "attention_mask": mask},
        ),
        (decoder_spec(2), tiny_nllb.decoder_fp32, tiny_nllb.decoder_int8, feeds),
    ):
        diff, relative = nllb_reference.float_diff(
            spec, run_onnx(fp32, graph_feeds), run_onnx(int8, graph_feeds)
        )
        assert diff > 0 and relative <= INT8_RTOL, (spec.name, diff, relative)


# ----------------------------------------------------------------------------- configs


def _config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("profile", ["config.pbtxt", "configs/gpu.pbtxt"])
def test_committed_configs_serve_the_exported_files(tiny_nllb: TinyNllb, profile: str) -> None:
    """The python model's contract, and the graph files its parameters name."""
    bls = _config(TEMPLATES / BLS / profile)
    assert bls.backend == "python" and bls.max_batch_size > 0 and bls.dynamic_batching
    assert [i.name for i in bls.input] == ["text", "src_lang", "tgt_lang", "n_best", "max_length"]
    assert [o.name for o in bls.output] == ["translations", "scores", "token_ids"]
    params = {k: v.string_value for k, v in bls.parameters.items()}
    if profile == "config.pbtxt":  # the CPU export's files (the GPU export writes *_fp16.onnx)
        version = tiny_nllb.repository / BLS / "1"
        assert (version / params["encoder_file"]).is_file()
        assert (version / params["decoder_file"]).is_file()
    else:
        assert params["encoder_file"].endswith("_fp16.onnx")
        assert "cuda" in params["decoder_providers"]
    # The BLS model knows every parameter it is given.
    assert set(params) <= set(PARAMETERS)
