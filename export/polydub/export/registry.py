"""The model families polydub exports, looked up by name and imported only when used."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from polydub.export.spec import FamilyExporter

# name -> "module:class"; modules import torch/transformers, so they load lazily.
FAMILIES: dict[str, str] = {
    "vad": "polydub.export.vad:VadExporter",
    "diarization": "polydub.export.diarization:DiarizationExporter",
    "gender": "polydub.export.gender:GenderExporter",
    "whisper": "polydub.export.whisper:WhisperExporter",
    "nllb": "polydub.export.nllb:NllbExporter",
    "mms_tts": "polydub.export.mms_tts:MmsTtsExporter",
    "separation": "polydub.export.separation:SeparationExporter",
}


def get_family(name: str) -> FamilyExporter:
    try:
        target = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
    module_name, class_name = target.split(":")
    exporter: FamilyExporter = getattr(importlib.import_module(module_name), class_name)()
    return exporter


@dataclass(frozen=True)
class ModelSource:
    """Where a served model's weights come from, and the license they are under."""

    family: str
    checkpoint: str
    license: str


# Triton model name (a regular expression, matched whole) -> its source. Kept here, import-free,
# so ``polydub models list`` needs no torch; tests check it against the exporters' Checkpoints.
LICENSES: dict[str, ModelSource] = {
    "silero_vad": ModelSource("vad", "faster-whisper:assets/silero_vad_v6.onnx", "MIT"),
    "pyannote_segmentation": ModelSource("diarization", "pyannote/segmentation-3.0", "MIT"),
    "speaker_embedding": ModelSource(
        "diarization", "pyannote/wespeaker-voxceleb-resnet34-LM", "CC-BY-4.0"
    ),
    "gender": ModelSource("gender", "polydub/pitch-rule (no weights)", "Apache-2.0"),
    "whisper(_encoder|_decoder)?": ModelSource(
        "whisper", "openai/whisper-base | openai/whisper-large-v3", "MIT"
    ),
    "nllb(_encoder|_decoder)?": ModelSource(
        "nllb", "facebook/nllb-200-distilled-600M | facebook/nllb-200-3.3B", "CC-BY-NC-4.0"
    ),
    "mms_tts_tokenizer": ModelSource(
        "mms_tts", "facebook/mms-tts-<lang> vocabularies", "CC-BY-NC-4.0"
    ),
    "mms_tts_[a-z]{3}": ModelSource("mms_tts", "facebook/mms-tts-<lang>", "CC-BY-NC-4.0"),
    "separation": ModelSource("separation", "polydub-mask-net (a directory or Hub id)", "MIT"),
    "separation_htdemucs": ModelSource(
        "separation",
        "HT-Demucs (a demucs .th checkpoint, or a directory / Hub id holding one)",
        "MIT",
    ),
}


def model_source(model: str) -> ModelSource | None:
    """The source of a Triton model by name; None for a model polydub does not export."""
    for pattern, source in LICENSES.items():
        if re.fullmatch(pattern, model):
            if source.checkpoint.endswith("<lang>"):
                return ModelSource(
                    source.family, source.checkpoint.replace("<lang>", model[-3:]), source.license
                )
            return source
    return None
