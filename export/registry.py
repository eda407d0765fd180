"""The model families polydub exports, looked up by name and imported only when used."""

from __future__ import annotations

import importlib

from polydub.export.spec import FamilyExporter

# name -> "module:class"; modules import torch/transformers, so they load lazily.
FAMILIES: dict[str, str] = {
    "vad": "polydub.export.vad:VadExporter",
    "diarization": "polydub.export.diarization:DiarizationExporter",
    "gender": "polydub.export.gender:GenderExporter",
    "whisper": "polydub.export.whisper:WhisperExporter",
    "nllb": "polydub.export.nllb:NllbExporter",
    "mms_tts": "polydub.export.mms_tts:MmsTtsExporter",
}


def get_family(name: str) -> FamilyExporter:
    try:
        target = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
    module_name, class_name = target.split(":")
    exporter: FamilyExporter = getattr(importlib.import_module(module_name), class_name)()
    return exporter
