"""NLLB-200 export (tiny preset): tokenizer, graph parity, and the search against transformers.

One tiny model (random weights, fixed seed, offline tokenizer) is built and exported once for
the module; its PyTorch original is the reference for every check.
"""

from __future__ import annotations

import dataclasses
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
    DECODER_SPEC,
    ENCODER,
    ENCODER_SPEC,
    FP32_ATOL,
    INT8_RTOL,
    generation_config,
)
from polydub.export.onnx_tools import max_abs_diff, run_onnx
from polydub.export.registry import get_family
from polydub.export.spec import ExportReport, Preset, Target
from polydub.languages import LANGUAGES
from polydub.serving import nllb_search, nllb_translate
from polydub.serving.nllb_service import PARAMETERS, TOKENIZER_DIR
from tests.checkout import TEMPLATES, place_templates

pytestmark = pytest.mark.unit

SENTENCES = [
    ("Hello, how are you today?", "eng_Latn", "fra_Latn"),
    ("Das Wetter ist schön und der Film beginnt um acht.", "deu_Latn", "spa_Latn"),
    ("Привет, как дела сегодня?", "rus_Cyrl", "kor_Hang"),
    ("Where is the station? We will meet again tomorrow.", "eng_Latn", "hin_Deva"),
]


@dataclasses.dataclass
class Tiny:
    model: Any
    tokenizer: Any
    repository: Path
    report: ExportReport
    config: nllb_search.GenerationConfig
    encoder_fp32: Path
    decoder_fp32: Path
    encoder_int8: Path
    decoder_int8: Path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    model, tokenizer = nllb.build_tiny()
    repository = tmp_path_factory.mktemp("nllb_repository")
    report = NllbExporter().export_model(model, tokenizer, Target.CPU, repository, "tiny")
    place_templates(repository, report.models)
    return Tiny(
        model,
        tokenizer,
        repository,
        report,
        generation_config(model),
        repository / ENCODER / "1" / "model_fp32.onnx",
        repository / DECODER / "1" / "model_fp32.onnx",
        repository / ENCODER / "1" / "model.onnx",
        repository / DECODER / "1" / "model.onnx",
    )


def _batch(tokenizer: Any, sentences: list[tuple[str, str, str]]) -> tuple[Any, Any, list[int]]:
    rows = []
    for text, src, _ in sentences:
        tokenizer.src_lang = src
        rows.append(tokenizer(text).input_ids)
    ids = np.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask, [tokenizer.convert_tokens_to_ids(tgt) for _, _, tgt in sentences]


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_has_every_language_code_as_one_special_token(tiny: Tiny) -> None:
    codec = nllb_translate.NllbCodec(tiny.repository / BLS / "1" / TOKENIZER_DIR)
    vocab = tiny.tokenizer.get_vocab()
    ids = {lang.nllb: codec.language_id(lang.nllb) for lang in LANGUAGES.values()}
    assert all(vocab[code] == token_id for code, token_id in ids.items())
    assert len(set(ids.values())) == len(ids)
    assert all(code in tiny.tokenizer.additional_special_tokens for code in ids)
    # The fairseq layout of the real checkpoints: <s> <pad> </s> <unk> first.
    assert tiny.tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert len(tiny.tokenizer) == tiny.model.config.vocab_size


def test_codec_encodes_like_the_nllb_tokenizer(tiny: Tiny) -> None:
    codec = nllb_translate.NllbCodec(tiny.repository / BLS / "1" / TOKENIZER_DIR)
    for text, src, _ in SENTENCES:
        tiny.tokenizer.src_lang = src
        expected = tiny.tokenizer(text).input_ids
        encoded = codec.encode(text, src, 512)
        assert encoded == expected
        assert encoded[0] == codec.language_id(src) and encoded[-1] == 2  # [src] ... </s>
        assert codec.decode(encoded) == text
    assert codec.encode("Hello there, how are you?", "eng_Latn", 5)[-1] == 2  # cut, still closed
    assert len(codec.encode("Hello there, how are you?", "eng_Latn", 5)) == 5
    for bad in ("eng", "xx_Latn", "english", "fra_latn_x", "<mask>"):
        with pytest.raises(nllb_translate.UnknownLanguage, match="FLORES-200"):
            codec.language_id(bad)


# ----------------------------------------------------------------------------- export & parity


def test_export_report_and_files(tiny: Tiny) -> None:
    report = tiny.report
    assert report.models == [ENCODER, DECODER, BLS]
    assert report.max_abs_diff[ENCODER] <= FP32_ATOL and report.max_abs_diff[DECODER] <= FP32_ATOL
    assert report.token_match == {DECODER: True}
    assert set(report.int8_max_abs_diff) == {ENCODER, DECODER}
    for model in (ENCODER, DECODER):
        assert (tiny.repository / model / "config.pbtxt").is_file()
        assert (tiny.repository / model / "configs" / "gpu.pbtxt").is_file()
        served = onnx.load(str(tiny.repository / model / "1" / "model.onnx"))
        assert "DynamicQuantizeLinear" in {n.op_type for n in served.graph.node}  # int8 on CPU
    version = tiny.repository / BLS / "1"
    for name in (
        "model.py",
        "tokenizer/tokenizer.json",
        "tokenizer/generation.json",
    ):
        assert (version / name).is_file(), name
    generation = nllb_search.GenerationConfig.load(version / TOKENIZER_DIR)
    assert generation == tiny.config
    assert (generation.decoder_layers, generation.decoder_heads, generation.head_dim) == (2, 4, 16)


def test_decoder_stores_the_shared_embedding_once(tiny: Tiny) -> None:
    """lm_head is tied to the embeddings: one fp32 copy in the decoder (Gather and a Gemm read
    it), where constant folding used to add a transposed one; int8 adds its own int8 head."""
    vocab, d_model = tiny.model.config.vocab_size, tiny.model.config.d_model
    for path in (tiny.decoder_fp32, tiny.decoder_int8):
        graph = onnx.load(str(path)).graph
        floats = [tuple(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        assert floats.count((vocab, d_model)) == 1 and (d_model, vocab) not in floats, path
    ops = {n.op_type for n in onnx.load(str(tiny.decoder_fp32)).graph.node}
    assert "Gemm" in ops
    saved = f"{vocab * d_model * 4 / 1e6:.1f} MB less"
    assert any(saved in note for note in tiny.report.notes), tiny.report.notes


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


def test_encoder_matches_transformers(tiny: Tiny) -> None:
    ids, mask, _ = _batch(tiny.tokenizer, SENTENCES)
    expected = nllb_reference.torch_encoder_outputs(tiny.model, ids, mask)
    actual = run_onnx(tiny.encoder_fp32, {"input_ids": ids, "attention_mask": mask})
    assert [a.shape for a in actual] == [e.shape for e in expected]
    assert actual[1].shape == (len(SENTENCES), 2, 4, ids.shape[1], 16)
    assert max_abs_diff(expected, actual) <= FP32_ATOL


def test_cached_decoder_steps_match_transformers_full_forward(tiny: Tiny) -> None:
    ids, mask, targets = _batch(tiny.tokenizer, SENTENCES)
    rng = np.random.default_rng(3)
    prefix = rng.integers(4, 700, size=(len(SENTENCES), 12)).astype(np.int64)
    prefix[:, 0], prefix[:, 1] = 2, targets  # decoder start, language code
    expected = nllb_reference.torch_logits(tiny.model, ids, mask, prefix)
    actual = nllb_reference.onnx_step_logits(
        tiny.decoder_fp32, tiny.encoder_fp32, ids, mask, prefix, tiny.config
    )
    assert actual.shape == expected.shape == (len(SENTENCES), 12, tiny.model.config.vocab_size)
    assert max_abs_diff([expected], [actual]) <= FP32_ATOL

    # top_log_probs / top_ids are log_softmax of the last position, sorted, as transformers'.
    feeds = nllb_reference.sample_decoder_feeds(
        tiny.encoder_fp32, ids, mask, targets, tiny.config, 0
    )
    logits, top_lp, top_ids, present_key, _ = run_onnx(tiny.decoder_fp32, feeds)
    last = logits[:, -1].astype(np.float64)
    shifted = last - last.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert np.array_equal(top_ids, np.argsort(-log_probs, axis=1, kind="stable")[:, :16])
    assert np.allclose(top_lp, np.take_along_axis(log_probs, top_ids, 1), atol=1e-5)
    assert present_key.shape == (len(SENTENCES), 2, 4, 2, 16)  # past 0 + 2 new tokens


def test_int8_graphs_within_stated_tolerance(tiny: Tiny) -> None:
    ids, mask, targets = _batch(tiny.tokenizer, SENTENCES)
    feeds = nllb_reference.sample_decoder_feeds(
        tiny.encoder_fp32, ids, mask, targets, tiny.config, 5
    )
    for spec, fp32, int8, graph_feeds in (
        (
            ENCODER_SPEC,
            tiny.encoder_fp32,
            tiny.encoder_int8,
            {"input_ids": ids, "attention_mask": mask},
        ),
        (DECODER_SPEC, tiny.decoder_fp32, tiny.decoder_int8, feeds),
    ):
        diff, relative = nllb_reference.float_diff(
            spec, run_onnx(fp32, graph_feeds), run_onnx(int8, graph_feeds)
        )
        assert diff > 0 and relative <= INT8_RTOL, (spec.name, diff, relative)


# ----------------------------------------------------------------------------- search vs generate


def test_greedy_tokens_identical_to_transformers_generate(tiny: Tiny) -> None:
    ids, mask, targets = _batch(tiny.tokenizer, SENTENCES)
    expected = nllb_reference.hf_generate(tiny.model, ids, mask, targets, max_length=40)
    found = nllb_reference.onnx_search(
        tiny.encoder_fp32, tiny.decoder_fp32, ids, mask, targets, tiny.config, 40, num_beams=1
    )
    assert [list(h[0].tokens) for h in found] == [e[0] for e in expected]
    assert {len(e[0]) for e in expected} != {40}, "some greedy outputs should end before max_length"


@pytest.mark.parametrize(("num_beams", "max_length", "forced_eos"), [(4, 48, False), (3, 12, True)])
def test_beam_search_identical_to_transformers_generate(
    tiny: Tiny, num_beams: int, max_length: int, forced_eos: bool
) -> None:
    import torch

    ids, mask, targets = _batch(tiny.tokenizer, SENTENCES)
    config = dataclasses.replace(tiny.config, forced_eos_token_id=2 if forced_eos else None)
    found = nllb_reference.onnx_search(
        tiny.encoder_fp32, tiny.decoder_fp32, ids, mask, targets, config, max_length, num_beams
    )
    lengths: set[int] = set()
    for row, target in enumerate(targets):
        n = int(mask[row].sum())
        with torch.inference_mode():
            out = tiny.model.generate(
                input_ids=torch.from_numpy(ids[row : row + 1, :n]),
                attention_mask=torch.from_numpy(mask[row : row + 1, :n]),
                forced_bos_token_id=target,
                forced_eos_token_id=2 if forced_eos else None,
                num_beams=num_beams,
                num_return_sequences=num_beams,
                max_length=max_length,
                early_stopping=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        expected = [nllb_reference._strip(s.tolist(), 1) for s in out.sequences]
        assert [list(h.tokens) for h in found[row]] == expected
        np.testing.assert_allclose([h.score for h in found[row]], out.sequences_scores, atol=1e-4)
        lengths.update(len(s) for s in expected)
        if forced_eos:
            assert all(s[-1] == 2 for s in expected)
    assert len(lengths) > 1  # finished beams of several lengths: early stopping was exercised


def _translator(tiny: Tiny, encoder: Path, decoder: Path) -> Any:
    codec = nllb_translate.NllbCodec(tiny.repository / BLS / "1" / TOKENIZER_DIR)
    return nllb_translate.Translator(
        codec, nllb_translate.OnnxRuntimeModel(encoder, decoder), tiny.config
    )


def test_n_best_candidates_are_distinct_and_sorted(tiny: Tiny) -> None:
    translator = _translator(tiny, tiny.encoder_int8, tiny.decoder_int8)  # as served on CPU
    items = [
        nllb_translate.TranslationItem(text, src, tgt, 4, 3, 30) for text, src, tgt in SENTENCES
    ]
    codec = translator.codec
    for (_, _, tgt), candidates in zip(SENTENCES, translator.translate(items), strict=True):
        assert len(candidates) == 3
        assert len({c.tokens for c in candidates}) == 3
        scores = [c.score for c in candidates]
        assert scores == sorted(scores, reverse=True)
        for c in candidates:
            assert c.tokens[:2] == (2, codec.language_id(tgt)) and len(c.tokens) <= 30
            assert c.text == codec.decode(c.tokens)
            assert c.score == pytest.approx(c.log_prob / (len(c.tokens) - 1), rel=1e-5)


def test_a_batch_gives_each_request_its_own_result(tiny: Tiny) -> None:
    """Mixed targets, beam sizes and lengths in one batch = each request alone (fp32 graphs)."""
    translator = _translator(tiny, tiny.encoder_fp32, tiny.decoder_fp32)
    items = [
        nllb_translate.TranslationItem(SENTENCES[0][0], "eng_Latn", "fra_Latn", 4, 2, 40),
        nllb_translate.TranslationItem(SENTENCES[1][0], "deu_Latn", "rus_Cyrl", 1, 1, 20),
        nllb_translate.TranslationItem(SENTENCES[2][0], "rus_Cyrl", "tha_Thai", 6, 5, 0),
        nllb_translate.TranslationItem("", "eng_Latn", "spa_Latn", 2, 2, 8),
    ]
    together = translator.translate(items)
    alone = [translator.translate([item])[0] for item in items]
    assert [[c.tokens for c in r] for r in together] == [[c.tokens for c in r] for r in alone]
    assert [len(r) for r in together] == [2, 1, 5, 2]
    assert max(len(c.tokens) for c in together[1]) <= 20
    # Default max_length: from the source length (2 * tokens + 16), capped.
    assert translator.max_length(items[2], 10) == 36


def test_search_rejects_bad_requests(tiny: Tiny) -> None:
    translator = _translator(tiny, tiny.encoder_int8, tiny.decoder_int8)
    with pytest.raises(nllb_translate.UnknownLanguage, match="'xx_Latn'"):
        translator.check(nllb_translate.TranslationItem("Hi", "eng_Latn", "xx_Latn", 4, 1))
    with pytest.raises(ValueError, match="num_beams <= 8"):
        translator.check(nllb_translate.TranslationItem("Hi", "eng_Latn", "fra_Latn", 9, 9))
    with pytest.raises(ValueError, match="n_best"):
        translator.check(nllb_translate.TranslationItem("Hi", "eng_Latn", "fra_Latn", 2, 3))


# ----------------------------------------------------------------------------- configs


def _config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("profile", ["config.pbtxt", "configs/gpu.pbtxt"])
def test_committed_configs_match_the_graphs(tiny: Tiny, profile: str) -> None:
    """Standard Triton configs whose tensors are the graphs' (all non-batch dims -1)."""
    for spec, path in ((ENCODER_SPEC, tiny.encoder_fp32), (DECODER_SPEC, tiny.decoder_fp32)):
        config = _config(TEMPLATES / spec.name / profile)
        graph = onnx.load(str(path)).graph
        graph_inputs = {i.name: i for i in graph.input}
        graph_outputs = {o.name: o for o in graph.output}
        assert config.name == spec.name and config.max_batch_size > 0
        assert [i.name for i in config.input] == list(graph_inputs)
        assert {o.name for o in config.output} <= set(graph_outputs)
        for tensor in (*config.input, *config.output):
            info = graph_inputs.get(tensor.name) or graph_outputs[tensor.name]
            dims = info.type.tensor_type.shape.dim
            assert len(tensor.dims) == len(dims) - 1 and set(tensor.dims) == {-1}
            assert all(d.dim_param for d in dims), f"{tensor.name}: a fixed axis in the graph"
        assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    bls = _config(TEMPLATES / BLS / profile)
    assert bls.backend == "python" and bls.max_batch_size > 0 and bls.dynamic_batching
    assert [i.name for i in bls.input] == ["text", "src_lang", "tgt_lang", "n_best", "max_length"]
    assert [o.name for o in bls.output] == ["translations", "scores", "token_ids"]
    params = {k: v.string_value for k, v in bls.parameters.items()}
    decoder = _config(TEMPLATES / DECODER / profile)
    assert int(params["decoder_max_batch_size"]) <= decoder.max_batch_size
    assert bls.max_batch_size * tiny.config.max_beams <= decoder.max_batch_size
    # The BLS model knows every parameter it is given.
    assert set(params) <= set(PARAMETERS)
