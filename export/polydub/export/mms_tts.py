"""MMS-TTS (``facebook/mms-tts-<iso3>``, VITS): one ONNX graph per language, loaded on demand.

Per language ``<iso3>`` the repository gets:

* ``mms_tts_<iso3>/1/model.onnx``: ``VitsSynthesizer`` (see ``mms_tts_graph``), inputs
  ``input_ids`` / ``attention_mask`` [B, T] int64, ``length_scale`` (1 / speaking rate),
  ``noise_scale``, ``noise_scale_duration`` [B, 1] float32 and ``seed`` [B, 1] int64; outputs
  ``waveform`` [B, S] float32 at 16 kHz, ``waveform_lengths`` [B, 1] int64 (the valid samples
  of each row) and ``durations`` [B, T] float32 (frames per token at rate 1, before rounding).
* ``mms_tts_<iso3>/config.pbtxt`` + ``configs/gpu.pbtxt``: committed for the default languages,
  rendered from the same template (``render_config``) for any other.
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

Precision: on CPU the fp32 graph is served. int8 dynamic quantization is measured on every export
and reported, never served: VITS is dominated by convolutions, which dynamic quantization leaves
alone, so it is no faster, while quantizing the text encoder's MatMuls moves the predicted
durations and so shifts the whole waveform (figures in ``MmsTtsExporter._measure_int8``). GPU: the same fp32 graph with
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
from polydub.export.onnx_tools import (
    check_parity,
    export_module,
    max_abs_diff,
    quantize_int8,
    run_onnx,
)
from polydub.export.repository import SOURCE_REPOSITORY, copy_committed, version_dir
from polydub.export.spec import (
    RANDOM,
    Checkpoint,
    Checkpoints,
    ExportReport,
    GraphSpec,
    Preset,
    Target,
    TensorSpec,
)
from polydub.languages import get_language
from polydub.orchestrator.text_normalize import TtsTokenizer

log = logging.getLogger(__name__)

FAMILY = "mms_tts"
LICENSE = "CC-BY-NC-4.0"
TOKENIZER_MODEL = "mms_tts_tokenizer"
DEFAULT_LANGUAGES = ("eng", "spa", "fra", "deu")
LANGUAGES_ENV = "POLYDUB_MMS_TTS_LANGUAGES"  # e.g. "eng,spa,ita": which voices to export

INPUT_NAMES = (
    "input_ids",
    "attention_mask",
    "length_scale",
    "noise_scale",
    "noise_scale_duration",
    "seed",
)
OUTPUT_NAMES = ("waveform", "waveform_lengths", "durations")

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

FP32_ATOL = 1e-3  # waveform / durations vs PyTorch (observed ~1e-4 on values of order 1-10)
INT8_ATOL = 5e-2


def model_name(language: str) -> str:
    return f"mms_tts_{language}"


def hub_id(language: str) -> str:
    return f"facebook/mms-tts-{language}"


def graph_spec(language: str) -> GraphSpec:
    batch, tokens, samples = "batch", "tokens", "samples"
    return GraphSpec(
        name=model_name(language),
        inputs=(
            TensorSpec("input_ids", "int64", (batch, tokens)),
            TensorSpec("attention_mask", "int64", (batch, tokens)),
            TensorSpec("length_scale", "float32", (batch, 1)),
            TensorSpec("noise_scale", "float32", (batch, 1)),
            TensorSpec("noise_scale_duration", "float32", (batch, 1)),
            TensorSpec("seed", "int64", (batch, 1)),
        ),
        outputs=(
            TensorSpec("waveform", "float32", (batch, samples)),
            TensorSpec("waveform_lengths", "int64", (batch, 1)),
            TensorSpec("durations", "float32", (batch, tokens)),
        ),
        opset=17,
        fp32_atol=FP32_ATOL,
        int8_atol=INT8_ATOL,
        quantize=False,  # int8 measured, not served (see _measure_int8)
    )


def languages_from_env() -> tuple[str, ...]:
    raw = os.environ.get(LANGUAGES_ENV, "")
    codes = tuple(c.strip() for c in raw.split(",") if c.strip())
    return codes or DEFAULT_LANGUAGES


# ---------------------------------------------------------------------------------- configs

_CPU_TEMPLATE = """\
# MMS-TTS {language} ({hub_id}, VITS; weights CC-BY-NC-4.0). Generated by export/mms_tts.py
# (render_config); loaded on demand (explicit model control) and unloaded when idle.
name: "{model}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "length_scale" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "noise_scale" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "noise_scale_duration" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [
  {{ name: "waveform" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "waveform_lengths" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "durations" data_type: TYPE_FP32 dims: [ -1 ] }}
]
{instance_group}
# Requests batch when their token counts are equal: the client pads input_ids to a multiple
# of 16 (attention_mask 0), so sentences of similar length share one run.
dynamic_batching {{
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: {queue_delay}
  default_queue_policy {{
    max_queue_size: 64
    timeout_action: REJECT
    default_timeout_microseconds: 60000000
  }}
}}
{optimization}"""

_CPU_INSTANCES = "instance_group [ { count: 1 kind: KIND_CPU } ]"
_GPU_INSTANCES = "instance_group [ { count: 1 kind: KIND_GPU } ]"
_GPU_OPTIMIZATION = """\
# fp32 graph, TensorRT builds FP16 engines for what it can run; the rest stays on CUDA in fp32.
optimization {
  execution_accelerators {
    gpu_execution_accelerator : [ {
      name : "tensorrt"
      parameters { key: "precision_mode" value: "FP16" }
      parameters { key: "max_workspace_size_bytes" value: "1073741824" }
    } ]
  }
}
"""


def render_config(language: str, *, gpu: bool = False) -> str:
    """config.pbtxt (CPU profile) or configs/gpu.pbtxt for one language."""
    return _CPU_TEMPLATE.format(
        language=get_language(language).name,
        hub_id=hub_id(language),
        model=model_name(language),
        instance_group=_GPU_INSTANCES if gpu else _CPU_INSTANCES,
        queue_delay=2000 if gpu else 5000,
        optimization=_GPU_OPTIMIZATION if gpu else "",
    )


def place_configs(repository: Path, language: str, source: Path = SOURCE_REPOSITORY) -> None:
    """The committed configs when there are some, else the rendered template."""
    model = model_name(language)
    if (source / model / "config.pbtxt").is_file():
        copy_committed(repository, [model], source)
        return
    (repository / model / "configs").mkdir(parents=True, exist_ok=True)
    (repository / model / "config.pbtxt").write_text(render_config(language))
    (repository / model / "configs" / "gpu.pbtxt").write_text(render_config(language, gpu=True))


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


# ---------------------------------------------------------------------------------- checks


def example_feeds(
    tokenizer: TtsTokenizer, texts: list[str], rates: list[float], seeds: list[int]
) -> dict[str, NDArray[Any]]:
    """A padded batch as the client builds it (attention_mask 0 on padding)."""
    rows = [tokenizer.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    column = np.ones((len(rows), 1), dtype=np.float32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "length_scale": (1.0 / np.asarray(rates, dtype=np.float32)).reshape(-1, 1),
        "noise_scale": column * 0.667,
        "noise_scale_duration": column * 0.8,
        "seed": np.asarray(seeds, dtype=np.int64).reshape(-1, 1),
    }


def run_torch(synthesizer: Any, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
    import torch

    with torch.inference_mode():
        outputs = synthesizer(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    return [o.numpy() for o in outputs]


@contextlib.contextmanager
def _given_noise(duration_noise: Any, prior_noise: Any) -> Iterator[None]:
    """Make Hugging Face's VitsModel draw our noise: its duration predictor calls torch.randn,
    its prior torch.randn_like, once each per forward."""
    import torch

    randn, randn_like = torch.randn, torch.randn_like
    setattr(torch, "randn", lambda *a, **k: duration_noise.clone())  # noqa: B010
    setattr(torch, "randn_like", lambda t, **k: prior_noise.to(t.dtype).clone())  # noqa: B010
    try:
        yield
    finally:
        setattr(torch, "randn", randn)  # noqa: B010
        setattr(torch, "randn_like", randn_like)  # noqa: B010


def hf_reference(model: Any, feeds: dict[str, NDArray[Any]], row: int) -> tuple[Any, Any]:
    """One row through transformers' own VitsModel.forward with the synthesizer's noise.

    Proves ``VitsSynthesizer`` re-implements the forward faithfully (rates and noise scales set
    through the attributes the HF model reads)."""
    import torch

    from polydub.export.mms_tts_graph import reference_noise

    length = int(feeds["attention_mask"][row].sum())
    ids = torch.from_numpy(feeds["input_ids"][row : row + 1, :length])
    seed = torch.from_numpy(feeds["seed"][row : row + 1])
    model.speaking_rate = float(1.0 / feeds["length_scale"][row, 0])
    model.noise_scale = float(feeds["noise_scale"][row, 0])
    model.noise_scale_duration = float(feeds["noise_scale_duration"][row, 0])
    # First pass only to learn the frame count the prior noise needs.
    dur_noise, _ = reference_noise(seed, length, model.config.flow_size, 1)
    with _given_noise(dur_noise, torch.zeros(1)), torch.inference_mode():
        frames = int(model(ids).sequence_lengths[0]) // math.prod(model.config.upsample_rates)
    dur_noise, prior_noise = reference_noise(seed, length, model.config.flow_size, frames)
    with _given_noise(dur_noise, prior_noise), torch.inference_mode():
        out = model(ids)
    return out.waveform[0].numpy(), int(out.sequence_lengths[0])


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
        tokenizers = version_dir(repository, TOKENIZER_MODEL) / "tokenizers"
        tokenizers.mkdir(parents=True, exist_ok=True)
        copy_committed(repository, [TOKENIZER_MODEL])
        for name, checkpoint in checkpoints.items():
            language = name.removeprefix(model_name(""))
            get_language(language)
            started = time.perf_counter()
            spec = self._export_language(language, checkpoint, repository, report)
            (tokenizers / f"{language}.json").write_text(spec.to_json() + "\n", encoding="utf-8")
            report.notes.append(
                f"{model_name(language)}: exported in {time.perf_counter() - started:.1f} s"
            )
        return report

    def _export_language(
        self,
        language: str,
        checkpoint: Checkpoint,
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
        place_configs(repository, language)

        synthesizer = VitsSynthesizer(model).eval()
        graph = graph_spec(language)
        trace = example_feeds(spec, [vocab_text(spec, 3), vocab_text(spec, 2)], [1.0, 0.8], [0, 1])
        onnx_path = version_dir(repository, name) / "model.onnx"
        with _quiet():
            export_module(
                synthesizer, tuple(_tensor(trace[n]) for n in INPUT_NAMES), graph, onnx_path
            )

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

        self._measure_int8(name, onnx_path, feeds, actual, report)
        report.precision[name] = "fp32"
        report.models.append(name)
        return spec

    @staticmethod
    def _measure_int8(
        name: str,
        fp32_path: Path,
        feeds: dict[str, NDArray[Any]],
        fp32_out: list[NDArray[Any]],
        report: ExportReport,
    ) -> None:
        """Quantize, compare with fp32, record the figures; fp32 stays the served graph.

        Dynamic int8 only reaches the text encoder's linear layers (the convolutions dominate
        the cost), so it buys nothing, and it moves the predicted durations: a one-frame change
        shifts everything after it. At MMS dimensions (36 M parameters) it ran 0.53 s vs 0.51 s
        fp32 for 4.2 s of audio on 2 threads, moved durations by 0.7 % and the waveform by 0.27
        of full scale."""
        int8_path = fp32_path.with_name("model_int8.onnx")
        with _quiet():
            quantize_int8(fp32_path, int8_path)
        out = run_onnx(int8_path, feeds, OUTPUT_NAMES)
        int8_path.unlink()
        durations = float(np.max(np.abs(out[2] - fp32_out[2])))
        if np.array_equal(out[1], fp32_out[1]):
            report.int8_max_abs_diff[name] = max_abs_diff(fp32_out, out)
        else:
            report.int8_max_abs_diff[name] = math.inf  # lengths differ: not comparable
        waveform = report.int8_max_abs_diff[name]
        moved = f"max |Δ| {waveform:.2g}" if math.isfinite(waveform) else "lengths changed"
        report.notes.append(
            f"{name}: serving fp32 on CPU; int8 waveform {moved}, "
            f"durations max |Δ| {durations:.2g} frames"
        )


def vocab_text(spec: TtsTokenizer, length: int, offset: int = 0) -> str:
    """Speakable text in any script: the vocabulary's own letters in words of four."""
    ordered = [c for c, i in sorted(spec.vocab.items(), key=lambda kv: kv[1]) if i and c.strip()]
    letters = [c for c in ordered if c.isalpha()] or ordered
    chars = [letters[(offset + k) % len(letters)] for k in range(length)]
    return " ".join("".join(chars[k : k + 4]) for k in range(0, length, 4))


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
