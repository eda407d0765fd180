"""Whisper: features, tokenizer, logit rules and segments against transformers; the tiny export's
parity (fp32, int8) and greedy tokens; the ASR client's windowing and packing maths."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from polydub.errors import InvalidInput
from polydub.export import whisper_int8
from polydub.export.onnx_tools import consolidate_external_data, max_abs_diff, run_onnx
from polydub.export.spec import ExportReport, Preset, Target
from polydub.export.wer import pooled_word_error_rate
from polydub.export.whisper import FP16_RTOL, WhisperExporter
from polydub.export.whisper_graphs import (
    BLS_MODEL,
    DECODER_MODEL,
    ENCODER_MODEL,
    INT8_RMS_RTOL,
    decoder_spec,
    encoder_spec,
    graph_path,
)
from polydub.export.whisper_reference import (
    OrtWhisper,
    check_audio,
    check_graphs,
    hf_greedy_tokens,
    reference_audio,
    torch_references,
)
from polydub.languages import LANGUAGES
from polydub.orchestrator.inference.asr import (
    AsrClient,
    AudioRegion,
    TranscriptSegment,
    as_audio16k,
    cut_regions,
    merge_windows,
    plan_windows,
    unpack_segments,
)
from polydub.orchestrator.inference.asr_packing import PackedRegion, pack_regions
from polydub.serving import whisper_decode, whisper_features, whisper_text
from polydub.serving.whisper_service import TOKENIZER_DIR
from tests.checkout import place_templates

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    repository = tmp_path_factory.mktemp("repo")
    exporter = WhisperExporter()
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
    place_templates(repository, report.models)
    return repository, report


@pytest.fixture(scope="module")
def tiny(exported: tuple[Path, ExportReport]) -> tuple[Any, Any, Any]:
    """The same fixed-seed torch model and tokenizer the export used, plus its facts."""
    from transformers import WhisperTokenizer

    from polydub.export import whisper_tiny

    repository, _ = exported
    tokenizer_dir = repository / BLS_MODEL / "1" / TOKENIZER_DIR
    tokenizer = WhisperTokenizer.from_pretrained(str(tokenizer_dir))
    model, _ = whisper_tiny.build_model(tokenizer)
    facts = whisper_text.WhisperFacts.load(tokenizer_dir / whisper_text.FACTS_FILE)
    return model, tokenizer, facts


# ------------------------------------------------------------------------------ features


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(n_mels: int) -> None:
    import transformers

    hf: Any = transformers  # untyped
    extractor = hf.WhisperFeatureExtractor(feature_size=n_mels)
    np.testing.assert_allclose(
        whisper_features.mel_filters(n_mels), extractor.mel_filters.T, atol=1e-12
    )
    rng = np.random.default_rng(3)
    clips = [*check_audio()[:2], (0.3 * rng.standard_normal(31 * 16000)).astype(np.float32)]
    ours = whisper_features.log_mel_spectrogram(clips, n_mels)
    assert ours.shape == (3, n_mels, 3000) and ours.dtype == np.float32
    for clip, features in zip(clips, ours, strict=True):
        # transformers' numpy path (float64 STFT, as ours) and its default (float32 torch STFT).
        padded = np.zeros((1, whisper_features.N_SAMPLES), np.float32)
        padded[0, : min(clip.size, whisper_features.N_SAMPLES)] = clip[: whisper_features.N_SAMPLES]
        reference = extractor._np_extract_fbank_features(padded, "cpu")[0]
        np.testing.assert_allclose(features, reference, atol=5e-7)
        default = extractor(clip, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(features, default, atol=1e-4)


def test_log_mel_of_empty_and_silent_audio() -> None:
    empty, silence = whisper_features.log_mel_spectrogram(
        [np.zeros(0, np.float32), np.zeros(8000)], 80
    )
    # log10(1e-10) = -10 everywhere, floor at max - 8 keeps it, then (x + 4) / 4 = -1.5.
    np.testing.assert_array_equal(empty, np.full((80, 3000), -1.5, np.float32))
    np.testing.assert_array_equal(silence, empty)


# ----------------------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_has_whispers_special_layout(tiny: tuple[Any, Any, Any]) -> None:
    _, tokenizer, facts = tiny
    ids = tokenizer.convert_tokens_to_ids
    assert facts.eot == ids("<|endoftext|>") == tokenizer.eos_token_id
    assert facts.sot == facts.eot + 1 == ids("<|startoftranscript|>")
    # Language tokens follow <|startoftranscript|>, one per polydub language.
    codes = [lang.whisper for lang in LANGUAGES.values()]
    assert facts.languages == {c: facts.sot + 1 + k for k, c in enumerate(codes)}
    assert facts.languages == {c: ids(f"<|{c}|>") for c in codes}
    assert facts.translate == ids("<|translate|>") == facts.sot + 28
    assert facts.transcribe == ids("<|transcribe|>") == facts.translate + 1
    assert facts.no_speech == ids("<|nocaptions|>")
    assert facts.no_timestamps == ids("<|notimestamps|>") == tokenizer.all_special_ids[-1]
    assert facts.timestamp_begin == ids("<|0.00|>") == facts.no_timestamps + 1
    assert ids("<|30.00|>") == facts.timestamp_begin + 1500 == facts.vocab_size - 1
    assert len(tokenizer) == facts.vocab_size
    # What transformers' WhisperTokenizer itself takes as the first timestamp.
    assert tokenizer.all_special_ids[-1] + 1 == facts.timestamp_begin
    space = tokenizer.encode(" ", add_special_tokens=False)
    assert facts.begin_suppress_tokens == (space[0], facts.eot)
    assert space[0] not in facts.suppress_tokens
    assert {facts.sot, facts.translate, facts.transcribe, facts.no_speech} <= set(
        facts.suppress_tokens
    )


def test_detokenizer_matches_whisper_tokenizer(tiny: tuple[Any, Any, Any], tmp_path: Path) -> None:
    _, tokenizer, facts = tiny
    detok = whisper_text.Detokenizer.load(tokenizer.name_or_path, facts.eot)
    texts = [" hello world", " olá mundo, ciao!", "日本語 ♪ 🎵", " x"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert detok.decode(ids) == text == tokenizer.decode(ids)
    # Specials and timestamps mixed in are dropped, as transformers does.
    ids = [facts.timestamp_begin + 3, *tokenizer.encode(" hello", add_special_tokens=False)]
    ids += [facts.timestamp_begin + 50, facts.eot]
    assert detok.decode(ids) == " hello" == tokenizer.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------- logit rules


def test_logit_rules_match_transformers_processors(tiny: tuple[Any, Any, Any]) -> None:
    import copy

    import torch
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    model, _, facts = tiny
    generation = copy.deepcopy(model.generation_config)
    tb, prompt = facts.timestamp_begin, [facts.sot, facts.languages["en"], facts.transcribe]
    rng = np.random.default_rng(5)
    histories: list[list[int]] = [
        [],
        [tb + 10],
        [tb + 10, 50],
        [tb + 10, 50, 60, tb + 40],
        [tb + 10, 50, tb + 40, tb + 40],
        [tb + 10, 50, tb + 40, tb + 40, 70],
        [tb + 1500, 80, tb + 1500],
        [tb, 30, 31, 32],
    ]
    checked = 0
    for scale in (0.5, 5.0):  # flat and peaked distributions: both branches of the ts rule
        for history in histories:
            logits = (scale * rng.standard_normal((1, facts.vocab_size))).astype(np.float32)
            logits[0, tb + 20] += 8.0 * (scale > 1)  # make timestamps win sometimes
            ids = torch.tensor([prompt + history])
            scores = torch.from_numpy(logits.copy())
            for processor in (
                SuppressTokensAtBeginLogitsProcessor(generation.begin_suppress_tokens, 3),
                SuppressTokensLogitsProcessor(generation.suppress_tokens),
                WhisperTimeStampLogitsProcessor(generation, begin_index=3),
            ):
                scores = processor(ids, scores)
            ours = whisper_decode.apply_logit_rules(logits, [history], facts, first=not history)
            np.testing.assert_array_equal(ours, scores.numpy())
            assert int(np.argmax(ours)) == int(scores.argmax())
            checked += 1
    assert checked == 16


# ------------------------------------------------------------------------------ segments


def _facts_for_segments() -> Any:
    return whisper_text.WhisperFacts(
        checkpoint="t",
        n_mels=80,
        decoder_layers=1,
        decoder_heads=1,
        head_dim=1,
        vocab_size=2000,
        max_target_positions=448,
        eot=100,
        sot=101,
        translate=102,
        transcribe=103,
        no_speech=104,
        no_timestamps=105,
        timestamp_begin=106,
        languages={"en": 107},
        suppress_tokens=(),
        begin_suppress_tokens=(),
    )


def test_build_segments_from_timestamp_pairs() -> None:
    facts = _facts_for_segments()
    detok = whisper_text.Detokenizer({chr(ord("a") + i): i for i in range(26)}, facts.eot)
    tb = facts.timestamp_begin
    # <|0.00|> ab <|1.50|><|1.50|> c <|3.00|> d   (last one left open: ends at the duration)
    tokens = [tb, 0, 1, tb + 75, tb + 75, 2, tb + 150, 3]
    logprobs = [-1.0, -2.0, -3.0, -4.0, -0.5, -0.5, -0.5, -2.0]
    segments = whisper_text.build_segments(tokens, logprobs, facts, detok, duration=4.2)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.0, 1.5, "ab"),
        (1.5, 3.0, "c"),
        (3.0, 4.2, "d"),
    ]
    assert segments[0].tokens == (tb, 0, 1, tb + 75)
    assert segments[0].avg_logprob == pytest.approx(-2.5)
    assert segments[2].tokens == (3,)
    # No timestamps at all: one segment over the window; times clamp to the duration.
    plain = whisper_text.build_segments([0, 1], [-1.0, -1.0], facts, detok, duration=2.0)
    assert [(s.start, s.end, s.text) for s in plain] == [(0.0, 2.0, "ab")]
    late = whisper_text.build_segments(
        [tb + 100, 4, tb + 200], [0.0] * 3, facts, detok, duration=2.5
    )
    assert [(s.start, s.end, s.text) for s in late] == [(2.0, 2.5, "e")]
    assert whisper_text.build_segments([], [], facts, detok, duration=1.0) == []


# ------------------------------------------------------------------------------- export


def test_export_writes_the_bls_model_with_its_graphs(
    exported: tuple[Path, ExportReport], tiny: tuple[Any, Any, Any]
) -> None:
    """One served model: the BLS, with the encoder/decoder graphs as files of its version."""
    repository, report = exported
    _, _, facts = tiny
    assert report.models == [BLS_MODEL]
    assert report.checkpoint == "tiny-random-whisper"
    assert sorted(p.name for p in repository.iterdir()) == [BLS_MODEL]
    for name in (ENCODER_MODEL, DECODER_MODEL):
        assert graph_path(repository, name).is_file()
        assert graph_path(repository, name, "_fp32").is_file()
    bls = repository / BLS_MODEL
    assert (bls / "configs" / "gpu.pbtxt").is_file()
    config = (bls / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    for key, value in (("encoder_file", "encoder.onnx"), ("decoder_file", "decoder.onnx")):
        assert f'key: "{key}" value {{ string_value: "{value}" }}' in config
    assert (bls / "1" / "model.py").is_file()
    facts_json = json.loads((bls / "1" / TOKENIZER_DIR / whisper_text.FACTS_FILE).read_text())
    assert facts_json["n_mels"] == 80 and facts_json["decoder_layers"] == 2

    def io(path: Path) -> dict[str, list[int | str]]:
        graph = onnx.load(str(path)).graph
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.output)
        }

    encoder = io(graph_path(repository, ENCODER_MODEL, "_fp32"))
    assert encoder == {
        t.name: list(t.dims)
        for t in (*encoder_spec(80, 64, 2, 4).inputs, *encoder_spec(80, 64, 2, 4).outputs)
    }
    assert encoder["cross_key.1"] == ["batch", 4, 1500, 16]
    decoder = io(graph_path(repository, DECODER_MODEL, "_fp32"))
    spec = decoder_spec(64, 2, 4, facts.vocab_size)
    assert decoder == {t.name: list(t.dims) for t in (*spec.inputs, *spec.outputs)}
    assert decoder["logits"] == ["batch", facts.vocab_size]


def test_export_parity_within_tolerances(exported: tuple[Path, ExportReport]) -> None:
    _, report = exported
    # fp32 graphs vs PyTorch (the decoder also vs transformers' own uncached forward).
    assert report.max_abs_diff[ENCODER_MODEL] <= 1e-4
    assert report.max_abs_diff[DECODER_MODEL] <= 1e-4
    # int8 (weight-only) vs the fp32 graphs: error RMS over each output's RMS.
    assert 0 < report.int8_max_abs_diff[ENCODER_MODEL] <= INT8_RMS_RTOL
    assert 0 < report.int8_max_abs_diff[DECODER_MODEL] <= INT8_RMS_RTOL
    assert report.token_match == {BLS_MODEL: True}


def test_random_weights_keep_fp32_for_their_fragile_greedy_tokens(
    exported: tuple[Path, ExportReport],
) -> None:
    """The tiny model's logits are nearly flat: int8 moves its outputs by ~1% and still flips
    greedy tokens, so the task-level check refuses it; <graph>.onnx is then the fp32 file
    itself (one inode), and the int8 files are gone."""
    repository, report = exported
    assert report.precision == {BLS_MODEL: "fp32"}
    [note] = [n for n in report.notes if n.startswith("whisper fp32 served on CPU")]
    clips = whisper_int8.CHECK_CLIPS
    assert "espeak-ng speech" in note and "of fp32's tokens matched (need 90%" in note
    assert f"alone = in one batch on {clips}/{clips}" in note and "WER fp32" in note
    for name in (ENCODER_MODEL, DECODER_MODEL):
        served, fp32 = graph_path(repository, name), graph_path(repository, name, "_fp32")
        assert served.stat().st_ino == fp32.stat().st_ino and fp32.stat().st_nlink == 2
    assert not list(repository.rglob("*_int8.onnx"))


def test_accepted_int8_is_served_weight_only_and_batch_invariant(
    exported: tuple[Path, ExportReport],
    tiny: tuple[Any, Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With thresholds the tiny model can meet, the int8 graphs are served: MatMulNBits (no
    per-batch activation scale), their own files, and a clip's tokens alone equal its tokens
    in a batch of speech, tones, noise and silence."""
    import shutil

    repository, _ = exported
    model, _, facts = tiny
    monkeypatch.setattr(whisper_int8, "MIN_TOKEN_AGREEMENT", 0.5)
    monkeypatch.setattr(whisper_int8, "MAX_WER_INCREASE", 10.0)  # random weights: no WER
    paths = {}
    for name in (ENCODER_MODEL, DECODER_MODEL):
        paths[name] = graph_path(tmp_path, name, "_fp32")
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph_path(repository, name, "_fp32"), paths[name])
    tokenizer = Path(BLS_MODEL) / "1" / TOKENIZER_DIR
    shutil.copytree(repository / tokenizer, tmp_path / tokenizer)
    specs = {
        ENCODER_MODEL: encoder_spec(80, 64, 2, 4),
        DECODER_MODEL: decoder_spec(64, 2, 4, facts.vocab_size),
    }
    refs = torch_references(
        model, facts, whisper_features.log_mel_spectrogram(check_audio(), facts.n_mels)
    )
    report = ExportReport(family="whisper", checkpoint="tiny")
    verdict = WhisperExporter()._place_int8(paths, specs, refs, facts, report)
    assert verdict.accepted and report.precision == {BLS_MODEL: "int8"}
    assert verdict.batch_same == verdict.clips == whisper_int8.CHECK_CLIPS
    assert report.notes[-1].startswith("whisper int8 served on CPU")
    for name in (ENCODER_MODEL, DECODER_MODEL):
        served = graph_path(tmp_path, name)
        ops = {n.op_type for n in onnx.load(str(served)).graph.node}
        assert "MatMulNBits" in ops and "DynamicQuantizeLinear" not in ops
        assert served.stat().st_nlink == 1 and paths[name].stat().st_nlink == 1
    served_model = OrtWhisper.from_repository(tmp_path)
    audio = [*whisper_int8.check_clips(5, start=10).audios, *check_audio()]
    options = [whisper_decode.DecodeOptions("en")]
    together = served_model.decode(audio, options * len(audio), 24)
    for clip, result in zip(audio, together, strict=True):
        [alone] = served_model.decode([clip], options, 24)
        assert alone.tokens == result.tokens


def test_without_espeak_the_checks_fall_back_to_synthetic_clips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from polydub.export import speech_clips

    spoken = whisper_int8.check_clips(2)
    assert spoken.speech and spoken.texts == speech_clips.SENTENCES[:2]
    assert all(a.dtype == np.float32 and 2.0 < a.size / 16000 < 8.0 for a in spoken.audios)
    monkeypatch.setattr("polydub.export.speech_clips.shutil.which", lambda name: None)
    clips = whisper_int8.check_clips(4)
    assert not clips.speech and clips.texts == ("",) * 4
    audio, note = reference_audio()
    assert note is not None and "espeak-ng is not installed" in note
    assert [a.size for a in audio] == [a.size for a in check_audio()]


def test_decoder_stores_the_tied_embedding_once(
    exported: tuple[Path, ExportReport], tiny: tuple[Any, Any, Any]
) -> None:
    """proj_out is the embedding transposed: the decoder reads one initializer for both."""
    repository, _ = exported
    _, _, facts = tiny
    for variant in ("_fp32", ""):
        graph = onnx.load(str(graph_path(repository, DECODER_MODEL, variant))).graph
        floats = [tuple(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        assert floats.count((facts.vocab_size, 64)) == 1 and (64, facts.vocab_size) not in floats


def test_word_error_rate_and_token_agreement() -> None:
    wer = pooled_word_error_rate
    assert wer([("the quick brown fox", "The quick, brown fox!")]) == 0
    assert wer([("the quick brown fox", "the brown box"), ("a b", "a b c d")]) == 4 / 6
    agreement = whisper_int8.token_agreement
    assert agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 3, 4], [5, 6]]) == 1.0
    assert agreement([[1, 2, 3, 4], [5, 6]], [[1, 9, 3, 4], [5, 6, 7]]) == 1 - 2 / 6


def test_gpu_fp16_graphs_stay_close_to_torch(
    exported: tuple[Path, ExportReport], tiny: tuple[Any, Any, Any], tmp_path: Path
) -> None:
    """The GPU target's fp16 graphs (run here on the CPU provider) within FP16_RTOL."""
    import shutil

    repository, _ = exported
    model, _, facts = tiny
    paths = {}
    for name in (ENCODER_MODEL, DECODER_MODEL):
        paths[name] = graph_path(tmp_path, name, "_fp32")
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph_path(repository, name, "_fp32"), paths[name])
    refs = torch_references(
        model, facts, whisper_features.log_mel_spectrogram(check_audio(), facts.n_mels)
    )
    report = ExportReport(family="whisper", checkpoint="tiny")
    WhisperExporter()._place_fp16(paths, refs, facts, report)
    for name in (ENCODER_MODEL, DECODER_MODEL):
        graph = onnx.load(str(graph_path(tmp_path, name, "_fp16"))).graph
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
        assert graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT16  # fp32 I/O
        assert graph_path(tmp_path, name).read_bytes() == paths[name].read_bytes()
    fp16 = OrtWhisper(
        graph_path(tmp_path, ENCODER_MODEL, "_fp16"),
        graph_path(tmp_path, DECODER_MODEL, "_fp16"),
        facts,
    )
    enc_diff, dec_diff = check_graphs(
        refs,
        graph_path(tmp_path, ENCODER_MODEL, "_fp16"),
        graph_path(tmp_path, DECODER_MODEL, "_fp16"),
    )
    assert 0 < enc_diff <= FP16_RTOL and 0 < dec_diff <= FP16_RTOL
    [result] = fp16.decode(check_audio()[:1], [whisper_decode.DecodeOptions("en")], 8)
    assert len(result.tokens) == 8


def test_external_data_pieces_become_one_file(
    exported: tuple[Path, ExportReport], tmp_path: Path
) -> None:
    """What a > 2 GB export looks like (one file per weight), consolidated and still equal."""
    repository, _ = exported
    source = graph_path(repository, DECODER_MODEL, "_fp32")
    path = tmp_path / "model_fp32.onnx"
    onnx.save_model(
        onnx.load(str(source)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=1024,
    )
    pieces = set(tmp_path.iterdir()) - {path}
    assert len(pieces) > 5
    consolidate_external_data(path, pieces)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_fp32.onnx", "model_fp32.onnx.data"]
    feeds: dict[str, NDArray[Any]] = {"input_ids": np.array([[7]], np.int64)}
    for i in range(2):
        for kind in ("key", "value"):
            feeds[f"past_{kind}.{i}"] = np.zeros((1, 4, 0, 16), np.float32)
            feeds[f"cross_{kind}.{i}"] = np.ones((1, 4, 1500, 16), np.float32)
    assert max_abs_diff(run_onnx(source, feeds), run_onnx(path, feeds)) == 0.0


def test_onnx_greedy_loop_equals_transformers(
    exported: tuple[Path, ExportReport], tiny: tuple[Any, Any, Any]
) -> None:
    repository, _ = exported
    model, _, facts = tiny
    fp32 = OrtWhisper.from_repository(repository, "_fp32")
    audio = check_audio()
    features = whisper_features.log_mel_spectrogram(audio, facts.n_mels)
    for language, task in (("de", "translate"), (None, "transcribe")):
        ours = fp32.decode(audio, [whisper_decode.DecodeOptions(language, task)] * len(audio), 24)
        theirs = hf_greedy_tokens(model, features, language, task, 24, list(facts.languages))
        assert [r.tokens for r in ours] == theirs
        assert all(len(t) == 24 for t in theirs)  # the random model never says eot
        assert all(t[0] >= facts.timestamp_begin for t in theirs)  # rule: timestamp first
    # Detection restricted to fewer languages (a real checkpoint knows 99; polydub serves 27).
    pair = {"de": facts.languages["de"], "ko": facts.languages["ko"]}
    narrow = dataclasses.replace(facts, languages=pair)
    ours = whisper_decode.greedy_decode(
        fp32, features, [whisper_decode.DecodeOptions(None)] * 3, narrow, 12
    )
    theirs = hf_greedy_tokens(model, features, None, "transcribe", 12, list(pair))
    assert [r.tokens for r in ours] == theirs and {r.language for r in ours} <= set(pair)


def test_batched_loop_with_compaction_equals_one_by_one(
    exported: tuple[Path, ExportReport], tiny: tuple[Any, Any, Any]
) -> None:
    """Rows of one batch that stop early (max tokens reached via a detect-only row, eot forced)
    leave the others' tokens unchanged."""
    repository, _ = exported
    _, _, facts = tiny
    fp32 = OrtWhisper.from_repository(repository, "_fp32")
    audio = check_audio()
    options = [
        whisper_decode.DecodeOptions("en"),
        whisper_decode.DecodeOptions(None, "detect"),
        whisper_decode.DecodeOptions(None),
    ]
    batched = fp32.decode(audio, options, 16)
    for clip, opt, result in zip(audio, options, batched, strict=True):
        [alone] = fp32.decode([clip], [opt], 16)
        assert result.tokens == alone.tokens
        assert result.language == alone.language
        assert result.no_speech_prob == pytest.approx(alone.no_speech_prob, abs=1e-6)
    assert batched[1].tokens == [] and batched[1].language in facts.languages

    class EotAfter:
        """Wraps the backend: row 0's logits say eot from the 4th step on."""

        def __init__(self, inner: OrtWhisper) -> None:
            self.inner, self.steps = inner, 0
            self.rows_seen: list[int] = []

        def encode(self, features: NDArray[Any]) -> Any:
            return self.inner.encode(features)

        def step(self, ids: NDArray[Any], past: Any, cross: Any) -> Any:
            logits, present = self.inner.step(ids, past, cross)
            self.steps += 1
            self.rows_seen.append(ids.shape[0])
            if self.steps >= 4 and ids.shape[0] == 3:
                logits[0, facts.eot] = 1e4
            return logits, present

        def select(self, state: Any, rows: NDArray[Any]) -> Any:
            return self.inner.select(state, rows)

    wrapped = EotAfter(fp32)
    feats = whisper_features.log_mel_spectrogram(audio, facts.n_mels)
    three = [whisper_decode.DecodeOptions("en")] * 3
    results = whisper_decode.greedy_decode(wrapped, feats, three, facts, 12, compact_below=0.7)
    assert len(results[0].tokens) == 2  # eot at the 3rd sampled token
    assert [len(r.tokens) for r in results[1:]] == [12, 12]
    assert 2 in wrapped.rows_seen  # compacted from 3 rows to 2
    plain = fp32.decode(audio, three, 12)
    assert [r.tokens for r in results[1:]] == [r.tokens for r in plain[1:]]
    # One bound per row: a row with 0 only gets its language, the others stop at their own.
    bounded = whisper_decode.greedy_decode(fp32, feats, three, facts, [3, 0, 12])
    assert [len(r.tokens) for r in bounded] == [3, 0, 12]
    assert bounded[0].tokens == plain[0].tokens[:3] and bounded[2].tokens == plain[2].tokens
    assert bounded[1].language == plain[1].language
    # min_new_tokens: eot is masked until a row has that many tokens (transformers' rule).
    forced = whisper_decode.greedy_decode(
        EotAfter(fp32), feats, three, facts, 12, min_new_tokens=[6, 0, 0]
    )
    assert [len(r.tokens) for r in forced] == [6, 12, 12]
    assert forced[0].tokens[:2] == results[0].tokens


def test_unknown_language_or_task_is_rejected(tiny: tuple[Any, Any, Any]) -> None:
    _, _, facts = tiny
    with pytest.raises(ValueError, match=r"unsupported language 'xx'; supported: .*en"):
        whisper_decode.validate_options(whisper_decode.DecodeOptions("xx"), facts)
    with pytest.raises(ValueError, match="unknown task"):
        whisper_decode.validate_options(whisper_decode.DecodeOptions("en", "summarize"), facts)


# ------------------------------------------------------------------- client: pure maths


def test_plan_windows_overlap_and_cover() -> None:
    assert plan_windows(100, window=40, overlap=10) == [(0, 40), (30, 70), (60, 100)]
    assert plan_windows(40, window=40, overlap=10) == [(0, 40)]
    assert plan_windows(0, window=40, overlap=10) == [(0, 0)]
    assert plan_windows(41, window=40, overlap=10) == [(0, 40), (30, 41)]


def _seg(start: float, end: float, text: str = "") -> TranscriptSegment:
    return TranscriptSegment(start, end, text or f"{start}-{end}", -0.1, 0.01)


def test_merge_windows_keeps_each_segment_once_by_midpoint() -> None:
    spans = [(0.0, 30.0), (25.0, 55.0), (50.0, 70.0)]  # owners: [..27.5), [27.5, 52.5), [52.5..
    first = [_seg(0, 10), _seg(20, 27), _seg(26, 30)]  # 26-30: middle 28 -> window 2's
    second = [_seg(25.2, 27.0), _seg(26.0, 30.0), _seg(40, 52), _seg(52, 55)]
    third = [_seg(51, 54), _seg(60, 70)]
    merged = merge_windows(spans, [first, second, third])
    assert [(s.start, s.end) for s in merged] == [
        (0, 10),
        (20, 27),
        (26.0, 30.0),
        (40, 52),
        (51, 54),
        (60, 70),
    ]


def test_pack_regions_fills_windows_in_order() -> None:
    windows = pack_regions([10.0, 9.0, 10.0, 12.0, 30.0], window_s=30.0, gap_s=0.5)
    assert windows == [
        [
            PackedRegion(0, 0, 0.0, 10.0),
            PackedRegion(1, 0, 10.5, 9.0),
            PackedRegion(2, 0, 20.0, 10.0),
        ],
        [PackedRegion(3, 1, 0.0, 12.0)],
        [PackedRegion(4, 2, 0.0, 30.0)],
    ]
    with pytest.raises(ValueError, match="longer than a window"):
        pack_regions([31.0])


def test_unpack_segments_maps_back_to_each_region() -> None:
    placements = [PackedRegion(0, 0, 0.0, 10.0), PackedRegion(1, 0, 10.5, 9.0)]
    segments = [_seg(0.0, 4.0), _seg(4.0, 10.2), _seg(10.5, 15.0), _seg(15.0, 20.0)]
    out = unpack_segments(segments, placements)
    assert [(s.start, s.end) for s in out[0]] == [(0.0, 4.0), (4.0, 10.0)]
    # 15.0-20.0 runs past region 1's end (10.5 + 9.0 = 19.5): clamped to it.
    assert [(s.start, s.end) for s in out[1]] == [(0.0, 4.5), (4.5, 9.0)]


def test_as_audio16k_validates_and_resamples() -> None:
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = as_audio16k(tone, 48000)
    assert out.shape == (16000,) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), atol=1e-4)
    with pytest.raises(InvalidInput, match="mono"):
        as_audio16k(np.zeros((2, 10), np.float32))
    with pytest.raises(InvalidInput, match="float"):
        as_audio16k(np.zeros(10, np.int16))
    with pytest.raises(InvalidInput, match="NaN"):
        as_audio16k(np.array([0.0, np.nan], np.float32))


class FakeWhisper:
    """Stands in for the ``whisper`` model: one segment per run of non-zero samples, whose text
    is the run's amplitude; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        audio = inputs["audio"][0]
        language = inputs["language"][0, 0].decode()
        task = inputs["task"][0, 0].decode()
        self.requests.append({"samples": audio.size, "language": language, "task": task})
        segments = []
        loud = np.flatnonzero(audio != 0)
        if task != "detect" and loud.size:
            breaks = np.flatnonzero(np.diff(loud) > 1)
            starts = np.concatenate([[loud[0]], loud[breaks + 1]])
            ends = np.concatenate([loud[breaks], [loud[-1]]]) + 1
            for s, e in zip(starts, ends, strict=True):
                segments.append(
                    {
                        "start": s / 16000,
                        "end": e / 16000,
                        "text": f" {audio[s]:.1f}",
                        "tokens": [round(float(audio[s]) * 10)],
                        "avg_logprob": -0.5,
                    }
                )
        tokens = np.array([[s["tokens"][0] for s in segments]], np.int64).reshape(1, -1)
        return {
            "text": np.array([["".join(s["text"] for s in segments).encode()]], np.object_),
            "tokens": tokens,
            "segments": np.array([[json.dumps(segments).encode()]], np.object_),
            "detected_language": np.array([[(language or "fr").encode()]], np.object_),
            "language_probability": np.array([[0.75]], np.float32),
            "avg_logprob": np.array([[-0.5]], np.float32),
            "no_speech_prob": np.array([[0.125]], np.float32),
        }


async def test_client_packs_regions_and_maps_times_back() -> None:
    fake = FakeWhisper()
    client = AsrClient(fake, pack_gap_s=0.5)
    recording = np.zeros(120 * 16000, np.float32)
    spans = [(3.0, 11.0), (20.0, 26.0), (40.0, 49.0), (60.0, 70.0), (80.0, 81.0)]
    for k, (start, end) in enumerate(spans):  # each region one constant amplitude
        recording[int(start * 16000) : int(end * 16000)] = 0.1 * (k + 1)

    class Span:
        def __init__(self, start: float, end: float) -> None:
            self.start, self.end = start, end

    regions = cut_regions(recording, [Span(s, e) for s, e in spans])
    results = await client.transcribe_packed(regions)
    # Detected once (fr), then 8+6+9 s in one window and 10+1 s in a second one.
    assert [r["task"] for r in fake.requests] == ["detect", "transcribe", "transcribe"]
    assert [r["language"] for r in fake.requests] == ["", "fr", "fr"]
    assert fake.requests[1]["samples"] == int((8 + 0.5 + 6 + 0.5 + 9) * 16000)
    assert len(results) == 5
    for k, ((start, end), result) in enumerate(zip(spans, results, strict=True)):
        assert result.language == "fra" and result.language_probability == 0.75
        assert result.duration == pytest.approx(end - start)
        [segment] = result.segments
        assert segment.start == pytest.approx(start, abs=1e-6)
        assert segment.end == pytest.approx(end, abs=1e-6)
        assert segment.text == f" {0.1 * (k + 1):.1f}"
        assert segment.no_speech_prob == 0.125
        assert result.tokens == (k + 1,)


async def test_client_chunks_long_audio_and_merges_by_time() -> None:
    fake = FakeWhisper()
    client = AsrClient(fake, overlap_s=5.0)
    audio = np.zeros(70 * 16000, np.float32)
    for k, (start, end) in enumerate([(1.0, 4.0), (26.0, 28.0), (40.0, 44.0), (60.0, 69.0)]):
        audio[int(start * 16000) : int(end * 16000)] = 0.1 * (k + 1)
    result = await client.transcribe(audio, language="deu")
    # windows [0, 30) [25, 55) [50, 70): the 26-28 s region is seen twice, kept once.
    assert [r["samples"] for r in fake.requests] == [480000, 480000, 320000]
    assert {r["language"] for r in fake.requests} == {"de"}
    assert result.language == "deu" and result.duration == 70.0
    assert [(round(s.start, 3), round(s.end, 3), s.text) for s in result.segments] == [
        (1.0, 4.0, " 0.1"),
        (26.0, 28.0, " 0.2"),
        (40.0, 44.0, " 0.3"),
        (60.0, 69.0, " 0.4"),
    ]
    assert result.text == "0.1 0.2 0.3 0.4"

    fake.requests.clear()
    detected = await client.transcribe(audio[: 31 * 16000])  # no language: detect first
    assert [r["task"] for r in fake.requests] == ["detect", "transcribe", "transcribe"]
    assert detected.language == "fra" and detected.language_probability == 0.75


async def test_client_rejects_unknown_language_listing_supported() -> None:
    client = AsrClient(FakeWhisper())
    with pytest.raises(InvalidInput) as error:
        await client.transcribe(np.zeros(16000, np.float32), language="xx")
    assert "unsupported language 'xx'" in error.value.message
    assert "eng" in error.value.message and error.value.detail == {"supported": sorted(LANGUAGES)}
    with pytest.raises(InvalidInput, match="unknown task"):
        await client.transcribe(np.zeros(16000, np.float32), task="summarize")
    empty = await client.transcribe_packed([])
    assert empty == []
    [silent] = await client.transcribe_packed([AudioRegion(5.0, np.zeros(0, np.float32))])
    assert silent.segments == [] and silent.duration == 0.0 and silent.language == "fra"
