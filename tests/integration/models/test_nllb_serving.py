"""NLLB-200 served by the real local Triton: the python model ``nllb``, which runs the encoder and
decoder graphs in onnxruntime sessions of its own instance.

The tiny preset (random weights, offline tokenizer) is exported into the session's repository;
served results are compared with the same search run in-process on the same ONNX files.

Int8 dynamic quantization scales activations per tensor over the whole batch, so results can
depend on which segments share a batch: exact comparisons use batches whose composition the test
controls (one request; one request with several rows), concurrency tests check structure.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.errors import InvalidInput, PermanentError
from polydub.export.nllb import NllbExporter
from polydub.export.nllb_graphs import BLS
from polydub.export.spec import Preset, Target
from polydub.infra.triton import InferenceClient
from polydub.languages import LANGUAGES
from polydub.orchestrator.inference.translation import TranslationClient
from polydub.serving import nllb_search, nllb_translate
from polydub.serving.nllb_service import TOKENIZER_DIR, cpu_share
from polydub.settings import Settings
from tests.checkout import place_templates
from tests.integration.models.statistics import counts, settled

pytestmark = pytest.mark.integration
MODELS = (BLS,)
DEFAULT_BEAMS = 4  # model_repository/nllb/config.pbtxt
TEXTS = [
    "Hello, how are you today?",
    "The weather is nice and the film starts at eight.",
    "Where is the station?",
    "We will meet again tomorrow morning.",
]


@pytest.fixture(scope="module")
async def served(triton: InferenceClient, stack_settings: Settings) -> Path:
    repository = stack_settings.model_repository
    exporter = NllbExporter()
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
    place_templates(repository, report.models)
    for model in MODELS:
        await triton.load_model(model)
        assert await triton.is_model_ready(model)
    return repository


@pytest.fixture(scope="module")
def local(served: Path) -> Any:
    """The BLS model's Translator, run in-process on the served (int8) files with the served
    defaults: a batch is shared out among the same searches, so each row is decoded beside the
    same rows (int8 activations are quantized per run) and the scores match exactly."""
    tokenizer = served / BLS / "1" / TOKENIZER_DIR
    version = served / BLS / "1"
    searches, threads = cpu_share(0, 0)
    model = nllb_translate.OnnxRuntimeModel(
        version / "encoder.onnx", version / "decoder.onnx", threads=threads
    )
    limits = nllb_translate.TranslationLimits(
        max_source_tokens=256, max_length_cap=256, max_len_a=2.0, max_len_b=16
    )
    return nllb_translate.Translator(
        nllb_translate.NllbCodec(tokenizer),
        model,
        nllb_search.GenerationConfig.load(tokenizer),
        limits,
        searches,
    )


def _request(
    texts: list[str], sources: list[str], targets: list[str], n_best: int, max_length: int
) -> dict[str, NDArray[Any]]:
    rows = len(texts)
    return {
        "text": np.array([[t.encode()] for t in texts], dtype=np.object_),
        "src_lang": np.array([[s.encode()] for s in sources], dtype=np.object_),
        "tgt_lang": np.array([[t.encode()] for t in targets], dtype=np.object_),
        "n_best": np.full((rows, 1), n_best, dtype=np.int32),
        "max_length": np.full((rows, 1), max_length, dtype=np.int32),
    }


def _sequences(token_ids: NDArray[Any], pad: int = 1) -> list[list[int]]:
    """[n, T] padded sequences -> lists without the trailing <pad>."""
    out = []
    for row in token_ids:
        tokens = row.tolist()
        while len(tokens) > 2 and tokens[-1] == pad:
            tokens.pop()
        out.append(tokens)
    return out


async def _counts_after(
    triton: InferenceClient, model: str, before: tuple[int, int], inferences: int
) -> tuple[int, int]:
    """(inferences, executions) since ``before``, once ``inferences`` more are counted."""
    now = await counts(triton, model, at_least=before[0] + inferences)
    return now[0] - before[0], now[1] - before[1]


async def test_served_tokens_equal_in_process_search(
    triton: InferenceClient, served: Path, local: Any
) -> None:
    text, n_best, max_length = TEXTS[1], 3, 40
    result = await triton.infer(
        BLS,
        _request([text], ["eng_Latn"], ["fra_Latn"], n_best, max_length),
        ["translations", "scores", "token_ids"],
    )
    expected = local.translate(
        [
            nllb_translate.TranslationItem(
                text, "eng_Latn", "fra_Latn", DEFAULT_BEAMS, n_best, max_length
            )
        ]
    )[0]
    assert result["translations"].shape == (1, n_best)
    assert _sequences(result["token_ids"][0]) == [list(c.tokens) for c in expected]
    assert [t.decode() for t in result["translations"][0]] == [c.text for c in expected]
    np.testing.assert_allclose(result["scores"][0], [c.score for c in expected], atol=1e-5)


async def test_one_batch_with_mixed_target_languages(
    triton: InferenceClient, served: Path, local: Any
) -> None:
    """Rows of one request are one BLS execution: its composition is known, results exact."""
    targets = ["fra_Latn", "rus_Cyrl", "kor_Hang", "spa_Latn"]
    sources = ["eng_Latn", "eng_Latn", "deu_Latn", "eng_Latn"]
    before = await settled(triton, BLS)
    result = await triton.infer(
        BLS, _request(TEXTS, sources, targets, 2, 30), ["translations", "scores", "token_ids"]
    )
    assert await _counts_after(triton, BLS, before, 4) == (4, 1)  # 4 rows, one execution

    items = [
        nllb_translate.TranslationItem(t, s, g, DEFAULT_BEAMS, 2, 30)
        for t, s, g in zip(TEXTS, sources, targets, strict=True)
    ]
    expected = local.translate(items)
    codec = local.codec
    for row, (target, candidates) in enumerate(zip(targets, expected, strict=True)):
        served_tokens = _sequences(result["token_ids"][row])
        assert served_tokens == [list(c.tokens) for c in candidates]
        # Every candidate starts with the decoder start and its own forced language code.
        assert {tuple(s[:2]) for s in served_tokens} == {(2, codec.language_id(target))}
        np.testing.assert_allclose(result["scores"][row], [c.score for c in candidates], atol=1e-5)


async def test_n_best_returns_distinct_candidates_sorted_by_score(
    triton: InferenceClient, served: Path
) -> None:
    client = TranslationClient(triton)
    result = await client.translate(TEXTS[3], "eng", "deu", n_best=3, max_length=30)
    assert (result.source, result.target) == ("eng", "deu")
    assert len(result.candidates) == 3
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert result.best == result.candidates[0] and result.text == result.best.text

    raw = await triton.infer(
        BLS, _request([TEXTS[3]], ["eng_Latn"], ["deu_Latn"], 3, 30), ["token_ids", "scores"]
    )
    sequences = _sequences(raw["token_ids"][0])
    assert len({tuple(s) for s in sequences}) == 3
    np.testing.assert_allclose(raw["scores"][0], scores, atol=1e-6)


async def test_concurrent_translations_share_batches(triton: InferenceClient, served: Path) -> None:
    client = TranslationClient(triton)
    texts = [f"{TEXTS[i % len(TEXTS)]} Segment {i}." for i in range(20)]
    targets = ["fra", "spa", "rus", "kor"]
    bls_before = await settled(triton, BLS)
    results = await asyncio.gather(
        *(
            client.translate(text, "eng", targets[i % 4], n_best=2, max_length=24)
            for i, text in enumerate(texts)
        )
    )
    bls = await _counts_after(triton, BLS, bls_before, 20)

    assert [r.target for r in results] == [targets[i % 4] for i in range(20)]
    assert all(len(r.candidates) == 2 for r in results)
    # 20 requests in fewer executions: segments of different jobs and languages batched (each
    # execution encodes its batch once and decodes all its beams together, in-process).
    # (At least 20: the session's Triton is shared, a job of another test may add a few.)
    assert bls[0] >= 20 and bls[1] < bls[0], f"nllb: {bls[1]} executions for {bls[0]} requests"
    print(f"nllb: 20 requests in {bls[1]} executions")


async def test_translate_many_matches_translate(triton: InferenceClient, served: Path) -> None:
    client = TranslationClient(triton)
    many = await client.translate_many(TEXTS[:2], "eng", "ita", n_best=1, max_length=20)
    assert [len(t.candidates) for t in many] == [1, 1]
    assert all(t.target == "ita" and t.best.score < 0 for t in many)


async def test_bad_input_is_a_clear_error(triton: InferenceClient, served: Path) -> None:
    client = TranslationClient(triton)
    with pytest.raises(InvalidInput) as unknown:
        await client.translate("Hello", "eng", "xxx")
    assert "'xxx'" in unknown.value.message and "fra" in unknown.value.message
    assert unknown.value.detail == {"supported": sorted(LANGUAGES)}
    with pytest.raises(InvalidInput):
        await client.translate("Hello", "klingon", "fra")
    with pytest.raises(InvalidInput):
        await client.translate("Hello", "eng", "fra", n_best=9)

    # The server checks too: a bad FLORES code fails its own request with a clear message.
    with pytest.raises(PermanentError) as served_error:
        await triton.infer(
            BLS, _request(["Hello"], ["eng_Latn"], ["xx_Latn"], 1, 10), ["translations"]
        )
    assert "unknown language code 'xx_Latn'" in served_error.value.message
    # ... and the model keeps serving.
    assert (await client.translate("Hello", "eng", "fra", max_length=10)).best.score < 0


async def test_empty_and_same_language_need_no_triton_call(
    triton: InferenceClient, served: Path
) -> None:
    client = TranslationClient(triton)
    before = await settled(triton, BLS)
    empty = await client.translate("   ", "eng", "fra", n_best=3)
    same = await client.translate("Bonjour.", "fra", "fra")
    assert empty.candidates[0].text == "" and len(empty.candidates) == 1
    assert same.text == "Bonjour." and same.best.score == 0.0
    assert await settled(triton, BLS) == before
