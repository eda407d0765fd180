"""Tiny exports (random or shipped weights, fixed seeds), each made once per session: the exporters'
tests (tests/unit/export) check them, the served code's (tests/unit/serving) and the orchestrator
clients' (tests/unit/orchestrator) run on them. Imports stay inside the fixtures so that the other
unit tests load no torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.checkout import place_templates

if TYPE_CHECKING:
    from polydub.export.spec import Checkpoints, ExportReport, FamilyExporter
    from polydub.serving.tts_tokenizer import TtsTokenizer
    from tests.unit.tiny_exports import TinyNllb


def _tiny_export(
    exporter: FamilyExporter, repository: Path, extra: Checkpoints | None = None
) -> tuple[Path, ExportReport]:
    """The family's tiny preset (plus ``extra`` checkpoints) on the CPU target, with templates."""
    from polydub.export.spec import Preset, Target

    checkpoints = {**exporter.defaults(Preset.TINY), **(extra or {})}
    report = exporter.export(checkpoints, Target.CPU, repository)
    place_templates(repository, report.models)
    return repository, report


# -------------------------------------------------------------------------------- Whisper


@pytest.fixture(scope="session")
def whisper_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    from polydub.export.whisper import WhisperExporter

    return _tiny_export(WhisperExporter(), tmp_path_factory.mktemp("whisper_repo"))


@pytest.fixture(scope="session")
def tiny_whisper(whisper_export: tuple[Path, ExportReport]) -> tuple[Any, Any, Any]:
    """The same fixed-seed torch model and tokenizer the export used, plus its facts."""
    from transformers import WhisperTokenizer

    from polydub.export import whisper_tiny
    from polydub.export.whisper_graphs import BLS_MODEL
    from polydub.serving import whisper_text
    from polydub.serving.whisper_service import TOKENIZER_DIR

    repository, _ = whisper_export
    tokenizer_dir = repository / BLS_MODEL / "1" / TOKENIZER_DIR
    tokenizer = WhisperTokenizer.from_pretrained(str(tokenizer_dir))
    model, _ = whisper_tiny.build_model(tokenizer)
    facts = whisper_text.WhisperFacts.load(tokenizer_dir / whisper_text.FACTS_FILE)
    return model, tokenizer, facts


# ------------------------------------------------------------------------------- NLLB-200


@pytest.fixture(scope="session")
def tiny_nllb(tmp_path_factory: pytest.TempPathFactory) -> TinyNllb:
    from polydub.export import nllb
    from polydub.export.nllb import NllbExporter
    from polydub.export.nllb_graphs import BLS, generation_config
    from polydub.export.spec import Target
    from tests.unit.tiny_exports import TinyNllb

    model, tokenizer = nllb.build_tiny()
    repository = tmp_path_factory.mktemp("nllb_repository")
    report = NllbExporter().export_model(model, tokenizer, Target.CPU, repository, "tiny")
    place_templates(repository, report.models)
    return TinyNllb(
        model,
        tokenizer,
        repository,
        report,
        generation_config(model),
        repository / BLS / "1" / "encoder_fp32.onnx",
        repository / BLS / "1" / "decoder_fp32.onnx",
        repository / BLS / "1" / "encoder.onnx",
        repository / BLS / "1" / "decoder.onnx",
    )


# -------------------------------------------------------------------------------- MMS-TTS


@pytest.fixture(scope="session")
def tts_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    from polydub.export.mms_tts import MmsTtsExporter
    from tests.unit.tiny_exports import TTS_LANGUAGE

    exporter = MmsTtsExporter(languages=(TTS_LANGUAGE,))
    return _tiny_export(exporter, tmp_path_factory.mktemp("tts_repo"))


@pytest.fixture(scope="session")
def tts_spec(tts_export: tuple[Path, ExportReport]) -> TtsTokenizer:
    from polydub.export.mms_tts import TOKENIZER_MODEL
    from polydub.serving.tts_tokenizer import TtsTokenizer
    from tests.unit.tiny_exports import TTS_LANGUAGE

    path = tts_export[0] / TOKENIZER_MODEL / "1" / "tokenizers" / f"{TTS_LANGUAGE}.json"
    return TtsTokenizer.from_json(path.read_text())


# ------------------------------------------------------------------ VAD, diarization, gender


@pytest.fixture(scope="session")
def vad_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    from polydub.export.vad import VadExporter

    return _tiny_export(VadExporter(), tmp_path_factory.mktemp("vad_repo"))


@pytest.fixture(scope="session")
def diarization_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    from polydub.export.diarization import SEGMENTATION, DiarizationExporter
    from polydub.export.spec import RANDOM, Checkpoint

    # Segmentation is optional (gated on the Hub): named here so both graphs are tested.
    extra = {SEGMENTATION: Checkpoint(RANDOM, "MIT")}
    return _tiny_export(DiarizationExporter(), tmp_path_factory.mktemp("diarization_repo"), extra)


@pytest.fixture(scope="session")
def gender_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    from polydub.export.gender import GenderExporter

    return _tiny_export(GenderExporter(), tmp_path_factory.mktemp("gender_repo"))
