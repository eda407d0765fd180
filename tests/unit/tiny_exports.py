"""What the tiny exports of tests/unit/conftest.py hold, and how the tests read them: shared by the
exporters' tests (tests/unit/export), the served code's (tests/unit/serving) and the orchestrator
clients' (tests/unit/orchestrator)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from polydub.export.mms_tts import model_name
from polydub.export.mms_tts_graph import OUTPUT_NAMES
from polydub.export.spec import ExportReport
from polydub.serving import nllb_search

# ------------------------------------------------------------------------------- NLLB-200

NLLB_SENTENCES = [
    ("Hello, how are you today?", "eng_Latn", "fra_Latn"),
    ("Das Wetter ist schön und der Film beginnt um acht.", "deu_Latn", "spa_Latn"),
    ("Привет, как дела сегодня?", "rus_Cyrl", "kor_Hang"),
    ("Where is the station? We will meet again tomorrow.", "eng_Latn", "hin_Deva"),
]


@dataclasses.dataclass
class TinyNllb:
    model: Any
    tokenizer: Any
    repository: Path
    report: ExportReport
    config: nllb_search.GenerationConfig
    encoder_fp32: Path
    decoder_fp32: Path
    encoder_int8: Path
    decoder_int8: Path


def nllb_batch(tokenizer: Any, sentences: list[tuple[str, str, str]]) -> tuple[Any, Any, list[int]]:
    rows = []
    for text, src, _ in sentences:
        tokenizer.src_lang = src
        rows.append(tokenizer(text).input_ids)
    ids = np.full((len(rows), max(map(len, rows))), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask, [tokenizer.convert_tokens_to_ids(tgt) for _, _, tgt in sentences]


# -------------------------------------------------------------------------------- MMS-TTS

TTS_LANGUAGE = "eng"
TTS_MODEL = model_name(TTS_LANGUAGE)
TTS_HOP = 256


def tts_onnx_path(repository: Path) -> Path:
    return repository / TTS_MODEL / "1" / "model.onnx"


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_tts_onnx(
    path: Path, feeds: Mapping[str, NDArray[Any]], outputs: Sequence[str] = OUTPUT_NAMES
) -> list[NDArray[Any]]:
    """In-process onnxruntime, one session per graph for the whole test session."""
    result: list[NDArray[Any]] = _session(path).run(list(outputs), dict(feeds))
    return result
