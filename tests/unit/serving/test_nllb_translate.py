"""NLLB-200 as the BLS model runs it (``polydub.serving.nllb_translate``), on the tiny export: the
codec against the NLLB tokenizer, n-best candidates, batching, and the request checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polydub.export.nllb_graphs import BLS
from polydub.serving import nllb_translate
from polydub.serving.nllb_service import TOKENIZER_DIR
from tests.unit.tiny_exports import NLLB_SENTENCES, TinyNllb

pytestmark = pytest.mark.unit


def test_codec_encodes_like_the_nllb_tokenizer(tiny_nllb: TinyNllb) -> None:
    codec = nllb_translate.NllbCodec(tiny_nllb.repository / BLS / "1" / TOKENIZER_DIR)
    for text, src, _ in NLLB_SENTENCES:
        tiny_nllb.tokenizer.src_lang = src
        expected = tiny_nllb.tokenizer(text).input_ids
        encoded = codec.encode(text, src, 512)
        assert encoded == expected
        assert encoded[0] == codec.language_id(src) and encoded[-1] == 2  # [src] ... </s>
        assert codec.decode(encoded) == text
    assert codec.encode("Hello there, how are you?", "eng_Latn", 5)[-1] == 2  # cut, still closed
    assert len(codec.encode("Hello there, how are you?", "eng_Latn", 5)) == 5
    for bad in ("eng", "xx_Latn", "english", "fra_latn_x", "<mask>"):
        with pytest.raises(nllb_translate.UnknownLanguage, match="FLORES-200"):
            codec.language_id(bad)


def _translator(tiny_nllb: TinyNllb, encoder: Path, decoder: Path, searches: int = 1) -> Any:
    codec = nllb_translate.NllbCodec(tiny_nllb.repository / BLS / "1" / TOKENIZER_DIR)
    return nllb_translate.Translator(
        codec,
        nllb_translate.OnnxRuntimeModel(encoder, decoder),
        tiny_nllb.config,
        searches=searches,
    )


def test_n_best_candidates_are_distinct_and_sorted(tiny_nllb: TinyNllb) -> None:
    translator = _translator(
        tiny_nllb, tiny_nllb.encoder_int8, tiny_nllb.decoder_int8
    )  # as served on CPU
    items = [
        nllb_translate.TranslationItem(text, src, tgt, 4, 3, 30)
        for text, src, tgt in NLLB_SENTENCES
    ]
    codec = translator.codec
    for (_, _, tgt), candidates in zip(NLLB_SENTENCES, translator.translate(items), strict=True):
        assert len(candidates) == 3
        assert len({c.tokens for c in candidates}) == 3
        scores = [c.score for c in candidates]
        assert scores == sorted(scores, reverse=True)
        for c in candidates:
            assert c.tokens[:2] == (2, codec.language_id(tgt)) and len(c.tokens) <= 30
            assert c.text == codec.decode(c.tokens)
            assert c.score == pytest.approx(c.log_prob / (len(c.tokens) - 1), rel=1e-5)


@pytest.mark.parametrize("searches", [1, 3])
def test_a_batch_gives_each_request_its_own_result(tiny_nllb: TinyNllb, searches: int) -> None:
    """Mixed targets, beam sizes and lengths in one batch = each request alone (fp32 graphs),
    whether the batch is one search or shared out among several running at once."""
    translator = _translator(
        tiny_nllb, tiny_nllb.encoder_fp32, tiny_nllb.decoder_fp32, searches=searches
    )
    items = [
        nllb_translate.TranslationItem(NLLB_SENTENCES[0][0], "eng_Latn", "fra_Latn", 4, 2, 40),
        nllb_translate.TranslationItem(NLLB_SENTENCES[1][0], "deu_Latn", "rus_Cyrl", 1, 1, 20),
        nllb_translate.TranslationItem(NLLB_SENTENCES[2][0], "rus_Cyrl", "tha_Thai", 6, 5, 0),
        nllb_translate.TranslationItem("", "eng_Latn", "spa_Latn", 2, 2, 8),
    ]
    together = translator.translate(items)
    alone = [translator.translate([item])[0] for item in items]
    assert [[c.tokens for c in r] for r in together] == [[c.tokens for c in r] for r in alone]
    assert [len(r) for r in together] == [2, 1, 5, 2]
    assert max(len(c.tokens) for c in together[1]) <= 20
    # Default max_length: from the source length (2 * tokens + 16), capped.
    assert translator.max_length(items[2], 10) == 36


def test_shares_balance_the_work_and_keep_item_order() -> None:
    costs = [40, 5, 5, 30, 10, 10]
    shares = nllb_translate._shares(costs, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    assert [sum(costs[i] for i in share) for share in shares] == [50, 50]
    assert all(share == sorted(share) for share in shares)
    assert nllb_translate._shares([7, 7], 4) == [[0], [1]]  # never an empty share
    assert nllb_translate._shares([3], 1) == [[0]]


@pytest.mark.parametrize("failing", [0, 1])  # the search in the calling thread, or the pool's
def test_a_failing_search_stops_the_others_and_fails_the_batch(
    tiny_nllb: TinyNllb, failing: int
) -> None:
    """One search raising fails the whole batch with its error: the other search stops at its
    next step (it would decode 38 more), and the batch fails only once it has ended and given
    its cache back, so no search still uses its cache when the next batch starts."""
    translator = _translator(tiny_nllb, tiny_nllb.encoder_int8, tiny_nllb.decoder_int8, searches=2)
    broken_model, other = translator.models[failing], translator.models[1 - failing]
    steps: list[int] = []
    ended: list[str] = []
    decode, release = other.decode, other.release

    def broken(*args: Any) -> Any:
        raise RuntimeError("decoder failed")

    def slow_decode(*args: Any) -> Any:
        steps.append(1)
        time.sleep(0.02)  # 38 steps would take 0.8 s: the failure comes well before
        return decode(*args)

    def slow_release() -> None:
        time.sleep(0.2)
        ended.append("other search")
        release()

    broken_model.decode = broken
    other.decode, other.release = slow_decode, slow_release
    items = [
        nllb_translate.TranslationItem(text, src, tgt, 2, 1, 40)
        for text, src, tgt in NLLB_SENTENCES[:2]
    ]
    with pytest.raises(RuntimeError, match="decoder failed"):
        translator.translate(items)
    assert ended == ["other search"]
    assert 1 <= len(steps) < 10


def test_search_rejects_bad_requests(tiny_nllb: TinyNllb) -> None:
    translator = _translator(tiny_nllb, tiny_nllb.encoder_int8, tiny_nllb.decoder_int8)
    with pytest.raises(nllb_translate.UnknownLanguage, match="'xx_Latn'"):
        translator.check(nllb_translate.TranslationItem("Hi", "eng_Latn", "xx_Latn", 4, 1))
    with pytest.raises(ValueError, match="num_beams <= 8"):
        translator.check(nllb_translate.TranslationItem("Hi", "eng_Latn", "fra_Latn", 9, 9))
    with pytest.raises(ValueError, match="n_best"):
        translator.check(nllb_translate.TranslationItem("Hi", "eng_Latn", "fra_Latn", 2, 3))


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        # Before per-layer K/V: one past_key for every layer.
        (("past_key", "past_value"), ("present_key", "present_value")),
        # Before two-part attention: the graph gave back the whole cache.
        (("past_key.0", "past_value.0"), ("present_key.0", "present_value.0")),
    ],
)
def test_an_older_export_is_refused_at_load(
    tmp_path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]
) -> None:
    """Loading an export from an older polydub must say to export again, not serve a model that
    fails every request."""
    import onnx
    from onnx import TensorProto, helper

    from polydub.serving.nllb_ort import OrtNllb

    names = ("input_ids", "encoder_attention_mask", *inputs)
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [o]) for n, o in zip(names[2:], outputs, strict=True)],
        "older",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
    )
    path = tmp_path / "decoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match="export it again"):
        OrtNllb(path, path)


def test_select_joins_each_parents_past_and_new_rows(tiny_nllb: TinyNllb) -> None:
    """The runner's buffered ``select`` = numpy's concatenate-then-index, step after step, as the
    search calls it (two new positions first, the batch growing, then shrinking), and the past it
    gives is never in the buffer the past it read was in."""
    from polydub.serving.nllb_search import extend_past

    model = nllb_translate.OnnxRuntimeModel(tiny_nllb.encoder_int8, tiny_nllb.decoder_int8)
    rng = np.random.default_rng(0)
    past, expected = None, None
    # (rows before the step, the rows the next step continues): 1 -> 3 beams, then 3 -> 2
    for step, (before, after) in enumerate([(1, 3), (3, 3), (3, 2), (2, 2)]):
        new_len = 2 if step == 0 else 1
        new = tuple(rng.standard_normal((before, 2, new_len, 4), dtype=np.float32) for _ in "kv")
        rows = rng.integers(0, before, after)
        following = model.select(past, new, rows)
        expected = extend_past(expected, new, rows)
        for got, want in zip(following, expected, strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.shape == (after, 2, step + 2, 4)
        if past is not None:
            assert not np.may_share_memory(past[0], following[0])
        past = following


def test_cross_index_feeds_one_source_per_run_of_beams() -> None:
    index = nllb_translate.cross_index
    rows = np.array([0, 0, 0, 2, 2, 2, 5, 5, 5])  # three requests of 3 beams each
    np.testing.assert_array_equal(index(rows, True), [0, 2, 5])
    np.testing.assert_array_equal(index(rows, False), rows)  # an export with a row per beam
    np.testing.assert_array_equal(index(np.array([1, 3, 4]), True), [1, 3, 4])  # first step
    for mixed in ([0, 0, 0, 1], [0, 1, 1, 0]):  # beam counts differ; a source in two runs
        np.testing.assert_array_equal(index(np.array(mixed), True), mixed)
    assert len(index(np.array([], dtype=np.int64), True)) == 0


def test_a_sources_beams_share_its_cross_attention(tiny_nllb: TinyNllb, tmp_path: Path) -> None:
    """A step fed one cross K/V per source gives what the same step gives fed one per beam (the
    graph's rows in runs of beams), and an export whose cross K/V axis is per row is fed so."""
    import onnx

    from polydub.serving.nllb_ort import OrtNllb

    model = OrtNllb(tiny_nllb.encoder_fp32, tiny_nllb.decoder_fp32)
    assert model.shares_cross
    codec = nllb_translate.NllbCodec(tiny_nllb.repository / BLS / "1" / TOKENIZER_DIR)
    sources = [codec.encode(text, src, 64) for text, src, _ in NLLB_SENTENCES]
    width = max(map(len, sources))
    ids = np.ones((len(sources), width), np.int64)
    mask = np.zeros_like(ids)
    for row, source in enumerate(sources):
        ids[row, : len(source)], mask[row, : len(source)] = source, 1
    cross = model.encode(ids, mask)
    rows = np.repeat(np.arange(len(sources)), 3)  # 3 beams each, each with a past of its own
    rng = np.random.default_rng(0)
    config = tiny_nllb.config
    shape = (len(rows), config.decoder_heads, 5, config.head_dim)
    past = tuple(rng.standard_normal(shape, dtype=np.float32) for _ in cross)
    tokens = rng.integers(4, 100, (len(rows), 1))

    def outputs(mask: Any, cross: Any) -> list[Any]:  # copied: the next decode reuses them
        top_log_probs, top_ids, new = model.decode(tokens, mask, cross, past)
        return [np.copy(top_log_probs), np.copy(top_ids), *(np.copy(a) for a in new)]

    shared = outputs(mask, cross)
    for got, want in zip(outputs(mask[rows], tuple(c[rows] for c in cross)), shared, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)

    graph = onnx.load(str(tiny_nllb.decoder_fp32))
    for tensor in graph.graph.input:
        if tensor.name.startswith("cross_") or tensor.name == "encoder_attention_mask":
            tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    older = tmp_path / "decoder.onnx"
    onnx.save(graph, older)
    assert not OrtNllb(tiny_nllb.encoder_fp32, older).shares_cross
