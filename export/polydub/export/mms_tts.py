"""MMS-TTS (``facebook/mms-tts-<iso3>``, VITS): one ONNX graph per language, loaded on demand.

Per language ``<iso3>`` the repository gets:

* ``mms_tts_<iso3>/1/model.onnx``: ``VitsSynthesizer`` (``mms_tts_graph``), inputs
  ``input_ids`` / ``attention_mask`` [B, T] int64, ``length_scale`` (1 / speaking rate),
  ``noise_scale``, ``noise_scale_duration`` [B, 1] float32 and ``seed`` [B, 1] int64; outputs
  ``waveform`` [B, S] float32 at 16 kHz, ``waveform_lengths`` [B, 1] int64 (the valid samples
  of each row) and ``durations`` [B, T] float32 (frames per token at rate 1, before rounding).
  Its 1-D convolutions are stored as 2-D ones of height 1 (``mms_tts_layout``: onnxruntime's
  blocked NCHWc kernels then run them, faster alone and faster still on a batch).
* ``mms_tts_<iso3>/config.pbtxt`` + ``configs/gpu.pbtxt``: rendered from one template
  (``mms_tts_configs``), the committed ones for the default languages replacing them.
* ``mms_tts_<iso3>/tokenizer/``: the ``VitsTokenizer`` files (vocab.json, tokenizer_config.json).
* ``mms_tts_tokenizer/1/tokenizers/<iso3>.json``: the client's ``TtsTokenizer`` spec (vocabulary,
  add_blank, sampling rate, hop length, license), served through Triton by the python model
  ``mms_tts_tokenizer`` so the orchestrator, which only talks to Triton, can tokenise.

Why a python model for the vocabulary rather than a ``parameters`` entry in each config.pbtxt:
the configs are committed files, while the vocabulary belongs to the weights that an export
writes (the tiny preset's differs from the real checkpoint's); writing it into config.pbtxt
would rewrite tracked files on every export into the source tree, and a second copy in
configs/gpu.pbtxt could drift. The tokenizer model reads only its own folder, so it also works
from a cloud model repository, and it lists the exported languages.

Precision: on CPU the graph is served with its vocoder's residual convolutions in int8
(``mms_tts_int8``: static QDQ, calibrated and judged on every export by log-spectral distance
against a second seed of the fp32 graph; fp32 is served when the judge refuses). Only the vocoder
is quantized, so durations, lengths and timing are those of fp32. GPU: the fp32 graph with
onnxruntime's TensorRT accelerator in FP16 (configs/gpu.pbtxt); no separate fp16 file, since the
integer noise generator and the spline flows must stay in fp32/int64 and TensorRT's FP16 mode
keeps the layers it cannot run in FP16 at full precision.

License: the MMS-TTS checkpoints are CC-BY-NC-4.0 (non-commercial); recorded in the checkpoint
list, the export report and each tokenizer spec.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export.hub import pretrained_args
from polydub.export.mms_tts_configs import hub_id, write_configs
from polydub.export.mms_tts_graph import INPUT_NAMES, OUTPUT_NAMES, graph_spec
from polydub.export.mms_tts_int8 import place_int8
from polydub.export.mms_tts_layout import conv1d_as_conv2d
from polydub.export.mms_tts_reference import example_feeds, hf_reference, run_torch, vocab_text
from polydub.export.onnx_tools import (
    check_parity,
    export_module,
    max_abs_diff,
    run_onnx,
)
from polydub.export.repository import version_dir
from polydub.export.spec import (
    RANDOM,
    Checkpoint,
    Checkpoints,
    ExportReport,
    Preset,
    Target,
)
from polydub.languages import get_language
from polydub.serving import names
from polydub.serving.tts_tokenizer import SPEC_FOLDER, TtsTokenizer, spec_path

log = logging.getLogger(__name__)

FAMILY = "mms_tts"
LICENSE = "CC-BY-NC-4.0"
TOKENIZER_MODEL = names.MMS_TTS_TOKENIZER
DEFAULT_LANGUAGES = ("eng", "spa", "fra", "deu")
LANGUAGES_ENV = "POLYDUB_MMS_TTS_LANGUAGES"  # e.g. "eng,spa,ita": which voices to export

# Characters of the tiny preset's vocabularies (id 0 is "_", the blank VitsTokenizer interleaves).
_BASE_CHARS = "_ '-abcdefghijklmnopqrstuvwxyz"
_TINY_EXTRA_CHARS = {
    "eng": "",
    "spa": "áéíóúñü",
    "fra": "àâæçéèêëîïôœùûüÿ",
    "deu": "äöüß",
    "ita": "àèéìíòóù",
    "por": "áâãàçéêíóôõú",
}
# Tiny VITS: the real MMS layout (hop 256 at 16 kHz, stochastic duration predictor, relative
# attention with window 4) at a few tens of thousands of parameters.
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "ffn_dim": 32,
    "flow_size": 8,
    "spectrogram_bins": 9,
    "upsample_initial_channel": 16,
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "duration_predictor_filter_channels": 16,
    "depth_separable_num_layers": 2,
    "duration_predictor_num_flows": 2,
    "prior_encoder_num_flows": 2,
    "prior_encoder_num_wavenet_layers": 2,
    "posterior_encoder_num_wavenet_layers": 1,
    "sampling_rate": 16_000,
}

model_name = names.mms_tts


def languages_from_env() -> tuple[str, ...]:
    raw = os.environ.get(LANGUAGES_ENV, "")
    codes = tuple(c.strip() for c in raw.split(",") if c.strip())
    return codes or DEFAULT_LANGUAGES


# ---------------------------------------------------------------------------------- models


def tiny_vocab(language: str) -> dict[str, int]:
    chars = _BASE_CHARS + _TINY_EXTRA_CHARS.get(language, "")
    return {c: i for i, c in enumerate(dict.fromkeys(chars))}


def tiny_tokenizer(language: str) -> Any:
    """A transformers VitsTokenizer over the tiny character vocabulary, built offline."""
    import transformers

    hf: Any = transformers  # untyped
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(_json(tiny_vocab(language)), encoding="utf-8")
        return hf.VitsTokenizer(
            str(vocab_file),
            language=language,
            add_blank=True,
            normalize=True,
            phonemize=False,
            is_uroman=False,
        )


def build_tiny(language: str) -> tuple[Any, Any]:
    """A randomly initialised VITS (fixed seed per language) and its VitsTokenizer, offline."""
    import torch
    import transformers

    hf: Any = transformers  # untyped
    vocab = tiny_vocab(language)
    torch.manual_seed(zlib.crc32(language.encode()))
    model = hf.VitsModel(hf.VitsConfig(vocab_size=len(vocab), **TINY_CONFIG)).eval()
    _calibrate_durations(model, TtsTokenizer(language, vocab))
    return model, tiny_tokenizer(language)


def _calibrate_durations(model: Any, tokenizer: TtsTokenizer) -> None:
    """Give the random duration predictor a realistic output: ~2 frames (32 ms) per token, blanks
    included (about 15 characters a second), with a log-spread of 0.4, instead of the 100x spread
    of random flows.

    Shifts and scales the first (in reverse: last) flow of the stochastic duration predictor, an
    elementwise affine whose channel 0 becomes the log-duration; so tiny speech has sentence-like
    lengths and speaking-rate changes behave as with real weights."""
    import torch

    from polydub.export.mms_tts_graph import VitsSynthesizer

    affine = model.duration_predictor.flows[0]
    synthesizer = VitsSynthesizer(model).eval()
    feeds = example_feeds(tokenizer, [_CALIBRATION_TEXT] * 4, [1.0] * 4, [1, 2, 3, 4])
    mask = feeds["attention_mask"].astype(bool)
    log_durations = np.log(np.maximum(run_torch(synthesizer, feeds)[2][mask], 1e-6))
    # The reverse affine maps x to (x - translate) * exp(-log_scale); x is today's log-duration.
    mean, spread = float(log_durations.mean()), float(log_durations.std()) or 1.0
    log_scale = math.log(spread / 0.4)
    with torch.no_grad():
        affine.log_scale[0] = log_scale
        affine.translate[0] = mean - math.log(2.0) * math.exp(log_scale)


_CALIBRATION_TEXT = "a calibration sentence with the usual mix of letters and spaces"


def load_pretrained(language: str, checkpoint: Checkpoint) -> tuple[Any, Any]:
    from transformers import VitsModel, VitsTokenizer

    ref, kwargs = pretrained_args(checkpoint)
    model = VitsModel.from_pretrained(ref, **kwargs).eval()
    tokenizer = VitsTokenizer.from_pretrained(ref, **kwargs)
    return model, tokenizer


def tokenizer_spec(language: str, model: Any, tokenizer: Any, checkpoint: str) -> TtsTokenizer:
    if getattr(tokenizer, "phonemize", False):
        raise ValueError(f"{checkpoint}: phonemizing tokenizers (espeak) are not supported")
    return TtsTokenizer(
        language=language,
        vocab=dict(tokenizer.encoder),
        add_blank=bool(tokenizer.add_blank),
        normalize=bool(tokenizer.normalize),
        is_uroman=bool(getattr(tokenizer, "is_uroman", False)),
        sampling_rate=int(model.config.sampling_rate),
        hop_length=int(math.prod(model.config.upsample_rates)),
        model=model_name(language),
        checkpoint=checkpoint,
        license=LICENSE,
    )


def _json(data: Any) -> str:
    import json

    return json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True)


# ---------------------------------------------------------------------------------- exporter


class MmsTtsExporter:
    name = FAMILY

    def __init__(self, languages: tuple[str, ...] | None = None) -> None:
        self.languages = tuple(languages or languages_from_env())
        for code in self.languages:
            get_language(code)  # unknown codes: a clear error listing the supported ones

    choosable = True

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        ref = RANDOM if preset is Preset.TINY else None
        return {
            model_name(lang): Checkpoint(ref or hub_id(lang), LICENSE) for lang in self.languages
        }

    def optional(self) -> dict[str, Checkpoint]:
        """Any supported language's voice can be added by name (``--model mms_tts_ita=...``)."""
        from polydub.languages import LANGUAGES

        return {model_name(c): Checkpoint(hub_id(c), LICENSE) for c in LANGUAGES}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        refs = {c.ref for c in checkpoints.values()}
        report = ExportReport(
            family=FAMILY,
            checkpoint="random VITS (tiny)" if refs == {RANDOM} else "facebook/mms-tts-*",
        )
        report.notes.append(f"MMS-TTS weights are {LICENSE} (non-commercial use only)")
        if target is Target.GPU:
            report.notes.append(
                "mms_tts: GPU serves the fp32 graph with TensorRT FP16 (configs/gpu.pbtxt)"
            )
        tokenizers = version_dir(repository, TOKENIZER_MODEL) / SPEC_FOLDER
        tokenizers.mkdir(parents=True, exist_ok=True)
        report.models.append(TOKENIZER_MODEL)
        for name, checkpoint in checkpoints.items():
            language = name.removeprefix(model_name(""))
            get_language(language)
            started = time.perf_counter()
            spec = self._export_language(language, checkpoint, target, repository, report)
            spec_path(tokenizers, language).write_text(spec.to_json() + "\n", encoding="utf-8")
            report.notes.append(
                f"{model_name(language)}: exported in {time.perf_counter() - started:.1f} s"
            )
        return report

    def _export_language(
        self,
        language: str,
        checkpoint: Checkpoint,
        target: Target,
        repository: Path,
        report: ExportReport,
    ) -> TtsTokenizer:
        from polydub.export.mms_tts_graph import VitsSynthesizer, fold_weight_norm

        name = model_name(language)
        if checkpoint.random:
            model, tokenizer = build_tiny(language)
            source = "tiny"
        else:
            model, tokenizer = load_pretrained(language, checkpoint)
            source = checkpoint.describe()
        fold_weight_norm(model)
        spec = tokenizer_spec(language, model, tokenizer, source)
        tokenizer.save_pretrained(str(repository / name / "tokenizer"))
        write_configs(repository, language)

        synthesizer = VitsSynthesizer(model).eval()
        graph = graph_spec(language)
        trace = example_feeds(spec, [vocab_text(spec, 3), vocab_text(spec, 2)], [1.0, 0.8], [0, 1])
        onnx_path = version_dir(repository, name) / "model.onnx"
        with _quiet():
            export_module(
                synthesizer, tuple(_tensor(trace[n]) for n in INPUT_NAMES), graph, onnx_path
            )
        # Before the parity check, which so covers the rewrite (mms_tts_layout: why).
        rewritten = conv1d_as_conv2d(onnx_path)
        report.notes.append(f"{name}: {rewritten} convolutions served as 2-D (NCHWc on CPU)")

        # Parity on other inputs: padding, two rates, two seeds.
        texts = [vocab_text(spec, 24), vocab_text(spec, 9, offset=5)]
        feeds = example_feeds(spec, texts, [1.0, 0.5], [7, 123456789])
        expected = run_torch(synthesizer, feeds)
        actual = run_onnx(onnx_path, feeds, OUTPUT_NAMES)
        report.max_abs_diff[name] = check_parity(
            name, max_abs_diff(expected, actual), *graph.tolerance("fp32")
        )
        reference, length = hf_reference(model, feeds, 0)
        hf_diff = max_abs_diff([reference], [expected[0][0, :length]])
        check_parity(f"{name} (synthesizer vs VitsModel)", hf_diff, *graph.tolerance("fp32"))
        report.notes.append(f"{name}: synthesizer vs transformers VitsModel max |Δ| {hf_diff:.2g}")

        if target is Target.CPU:
            with _quiet():
                verdict = place_int8(name, onnx_path, spec)
            report.precision[name] = "int8 vocoder" if verdict.accepted else "fp32"
            report.notes.append(verdict.note(name))
        else:
            report.precision[name] = "fp32"
        report.models.append(name)
        return spec


def _tensor(array: NDArray[Any]) -> Any:
    import torch

    return torch.from_numpy(array)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The TorchScript exporter warns about every traced shape check, the quantizer about
    pre-processing: noise around the figures the report gives."""
    import warnings

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs advice on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
