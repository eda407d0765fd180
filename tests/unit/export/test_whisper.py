"""Whisper export (tiny preset): the token facts it derives, its graphs and files, parity (fp32,
int8, fp16) and the int8 verdict. The served decoding is tested in tests/unit/serving, the
orchestrator's ASR client in tests/unit/orchestrator."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from polydub.export import whisper_int8
from polydub.export.onnx_tools import consolidate_external_data, max_abs_diff, run_onnx
from polydub.export.spec import RANDOM, Checkpoint, ExportReport, Target
from polydub.export.wer import pooled_word_error_rate
from polydub.export.whisper import FP16_RTOL, WhisperExporter, load_checkpoint
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
    reference_audio,
    torch_references,
)
from polydub.languages import LANGUAGES
from polydub.serving import whisper_decode, whisper_features, whisper_text
from polydub.serving.whisper_service import TOKENIZER_DIR

pytestmark = pytest.mark.unit


# -------------------------------------------------------------------------- token facts


def test_tiny_tokenizer_has_whispers_special_layout(tiny_whisper: tuple[Any, Any, Any]) -> None:
    _, tokenizer, facts = tiny_whisper
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


# ------------------------------------------------------------------------------- export


def test_export_writes_the_bls_model_with_its_graphs(
    whisper_export: tuple[Path, ExportReport], tiny_whisper: tuple[Any, Any, Any]
) -> None:
    """One served model: the BLS, with the encoder/decoder graphs as files of its version."""
    repository, report = whisper_export
    _, _, facts = tiny_whisper
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


def test_export_parity_within_tolerances(whisper_export: tuple[Path, ExportReport]) -> None:
    _, report = whisper_export
    # fp32 graphs vs PyTorch (the decoder also vs transformers' own uncached forward).
    assert report.max_abs_diff[ENCODER_MODEL] <= 1e-4
    assert report.max_abs_diff[DECODER_MODEL] <= 1e-4
    # int8 (weight-only) vs the fp32 graphs: error RMS over each output's RMS.
    assert 0 < report.int8_max_abs_diff[ENCODER_MODEL] <= INT8_RMS_RTOL
    assert 0 < report.int8_max_abs_diff[DECODER_MODEL] <= INT8_RMS_RTOL
    assert report.token_match == {BLS_MODEL: True}


def test_no_reduction_drops_a_dimension_the_first_step_leaves_empty(
    whisper_export: tuple[Path, ExportReport],
) -> None:
    """The first decoder step feeds an empty past. onnxruntime's CUDA provider refuses to drop
    a dimension of size 0 in a reduction (every Whisper request failed on an H100 until the
    past-length sum kept its dimension; bench/gpu_check.py), while the CPU provider accepts it,
    so only the graph's structure can guard it here."""
    repository, _ = whisper_export
    graph = onnx.load(str(graph_path(repository, DECODER_MODEL, "_fp32"))).graph
    reductions = [node for node in graph.node if node.op_type.startswith("Reduce")]
    assert reductions
    for node in reductions:
        keepdims = {a.name: a.i for a in node.attribute}.get("keepdims", 1)
        assert keepdims == 1, f"{node.name} drops its reduced dimension"


def test_random_weights_keep_fp32_for_their_fragile_greedy_tokens(
    whisper_export: tuple[Path, ExportReport],
) -> None:
    """The tiny model's logits are nearly flat: int8 moves its outputs by ~1% and still flips
    greedy tokens, so the task-level check refuses it; <graph>.onnx is then the fp32 file
    itself (one inode), and the int8 files are gone."""
    repository, report = whisper_export
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
    whisper_export: tuple[Path, ExportReport],
    tiny_whisper: tuple[Any, Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With thresholds the tiny model can meet, the int8 graphs are served: MatMulNBits (no
    per-batch activation scale), their own files, and a clip's tokens alone equal its tokens
    in a batch of speech, tones, noise and silence."""
    import shutil

    repository, _ = whisper_export
    model, _, facts = tiny_whisper
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
    whisper_export: tuple[Path, ExportReport], tiny_whisper: tuple[Any, Any, Any]
) -> None:
    """proj_out is the embedding transposed: the decoder reads one initializer for both."""
    repository, _ = whisper_export
    _, _, facts = tiny_whisper
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
    whisper_export: tuple[Path, ExportReport], tiny_whisper: tuple[Any, Any, Any], tmp_path: Path
) -> None:
    """The GPU target's fp16 graphs (run here on the CPU provider) within FP16_RTOL."""
    import shutil

    repository, _ = whisper_export
    model, _, facts = tiny_whisper
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
    whisper_export: tuple[Path, ExportReport], tmp_path: Path
) -> None:
    """What a > 2 GB export looks like (one file per weight), consolidated and still equal."""
    repository, _ = whisper_export
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


def test_the_export_lets_the_weights_go_before_placing_the_graphs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At large-v3 the PyTorch weights are 6 GB that placing the graphs does not read: with
    ``release_weights`` they are freed once the graphs are checked, and each phase is logged
    with the export's peak memory (what decides the machine an export needs)."""
    loaded: list[Any] = []

    def load(tokenizer_dir: Path) -> tuple[Any, Any, Any, str]:
        loaded.append(load_checkpoint(Checkpoint(RANDOM, "MIT"), tokenizer_dir))
        return loaded[-1]  # type: ignore[no-any-return]

    with caplog.at_level(logging.INFO, logger="polydub.export.memory"):
        report = WhisperExporter().export_loaded(load, Target.CPU, tmp_path, release_weights=True)
    model = loaded[0][0]
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert report.token_match == {BLS_MODEL: True} and report.precision
    assert (tmp_path / BLS_MODEL / "1" / "decoder.onnx").is_file()
    phases = [r.getMessage().split(";")[0] for r in caplog.records]
    assert phases == [
        f"whisper export: {phase}"
        for phase in ("graphs written", "graphs checked", "int8 graphs written", "graphs placed")
    ]
