"""MMS-TTS: client tokenisation, the exported graph against PyTorch and transformers' VitsModel at
fixed noise, speaking-rate behaviour, configs, and the client's pool / fitting logic in-process."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2

from polydub.errors import ConfigurationError, InvalidInput
from polydub.export.mms_tts import (
    DEFAULT_LANGUAGES,
    LICENSE,
    TOKENIZER_MODEL,
    MmsTtsExporter,
    build_tiny,
    model_name,
    tiny_tokenizer,
    tiny_vocab,
)
from polydub.export.mms_tts_configs import render_config
from polydub.export.mms_tts_graph import (
    FP32_ATOL,
    INPUT_NAMES,
    OUTPUT_NAMES,
    VitsSynthesizer,
    fold_weight_norm,
    gaussian_noise,
)
from polydub.export.mms_tts_reference import example_feeds, hf_reference, run_torch
from polydub.export.onnx_tools import max_abs_diff
from polydub.export.spec import ExportReport, Preset, Target
from polydub.orchestrator.inference.tts import (
    ModelPool,
    TtsClient,
    predicted_frames,
    request_inputs,
    solve_length_scale,
)
from polydub.serving.tts_tokenizer import TtsTokenizer
from tests.checkout import TEMPLATES, place_templates

pytestmark = pytest.mark.unit

LANGUAGE = "eng"
MODEL = model_name(LANGUAGE)
HOP = 256


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    repository = tmp_path_factory.mktemp("repo")
    exporter = MmsTtsExporter(languages=(LANGUAGE,))
    report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
    place_templates(repository, report.models)
    return repository, report


@pytest.fixture(scope="module")
def spec(exported: tuple[Path, ExportReport]) -> TtsTokenizer:
    path = exported[0] / TOKENIZER_MODEL / "1" / "tokenizers" / f"{LANGUAGE}.json"
    return TtsTokenizer.from_json(path.read_text())


@pytest.fixture(scope="module")
def synthesizer() -> tuple[Any, VitsSynthesizer]:
    model, _ = build_tiny(LANGUAGE)  # same seed as the export: same weights
    fold_weight_norm(model)
    return model, VitsSynthesizer(model).eval()


def onnx_path(repository: Path) -> Path:
    return repository / MODEL / "1" / "model.onnx"


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(
    path: Path, feeds: Mapping[str, NDArray[Any]], outputs: Sequence[str] = OUTPUT_NAMES
) -> list[NDArray[Any]]:
    """In-process onnxruntime, one session per graph for the whole module."""
    result: list[NDArray[Any]] = _session(path).run(list(outputs), dict(feeds))
    return result


# ---------------------------------------------------------------------------------- tokenizer


def test_normalisation_lowercases_strips_and_collapses() -> None:
    tok = TtsTokenizer("eng", tiny_vocab("eng"))
    assert (
        tok.normalize_text("  Hello,\n\tWORLD!!  it’s  ok — fine ") == "hello world it's ok - fine"
    )
    assert tok.normalize_text("Café Müller") == "cafe muller"  # accent-free base when absent
    assert tok.normalize_text("¡¿?!… 123") == ""


def test_normalisation_keeps_language_letters_and_composes() -> None:
    tok = TtsTokenizer("spa", tiny_vocab("spa"))
    decomposed = "Nin\u0303o Pe\u0301rez"  # as some translators emit it
    assert tok.normalize_text(decomposed) == "niño pérez"


def test_encode_interleaves_blank_and_matches_vits_tokenizer() -> None:
    hf_tokenizer = tiny_tokenizer("fra")
    tok = TtsTokenizer("fra", tiny_vocab("fra"))
    for text in ["Ça va très bien", "l'œuvre d'art", "Bonjour le monde"]:
        assert tok.encode(text) == hf_tokenizer(text)["input_ids"], text
    ids = tok.encode("ab")
    vocab = tiny_vocab("fra")
    assert ids == [0, vocab["a"], 0, vocab["b"], 0]
    assert tok.encode("...") == []
    assert TtsTokenizer("fra", vocab, add_blank=False).encode("ab") == [vocab["a"], vocab["b"]]


def test_tokenizer_spec_roundtrips(spec: TtsTokenizer) -> None:
    assert spec == TtsTokenizer.from_json(spec.to_json())
    assert (spec.language, spec.model, spec.license) == ("eng", MODEL, LICENSE)
    assert (spec.sampling_rate, spec.hop_length, spec.add_blank) == (16_000, HOP, True)
    assert spec.vocab == tiny_vocab("eng") and spec.vocab["_"] == 0


# ---------------------------------------------------------------------------------- noise


def test_noise_is_a_deterministic_standard_normal_per_seed() -> None:
    seeds = torch.tensor([[0], [1]])
    noise = gaussian_noise(seeds, 2, 8, 4000).numpy()
    assert noise.shape == (2, 8, 4000)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1.0) < 0.02
    assert np.array_equal(noise, gaussian_noise(seeds, 2, 8, 4000).numpy())
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.02
    # A prefix does not depend on how long the tensor is (padding-independent).
    assert np.array_equal(noise[:, :, :100], gaussian_noise(seeds, 2, 8, 100).numpy())


# ---------------------------------------------------------------------------------- graph


def test_export_writes_model_configs_and_tokenizers(exported: tuple[Path, ExportReport]) -> None:
    repository, report = exported
    assert report.models == [TOKENIZER_MODEL, MODEL]
    assert report.max_abs_diff[MODEL] <= FP32_ATOL
    assert onnx_path(repository).is_file()
    assert not (repository / MODEL / "1" / "model_int8.onnx").exists()
    assert (repository / MODEL / "config.pbtxt").read_text() == render_config(LANGUAGE)
    assert (repository / MODEL / "tokenizer" / "vocab.json").is_file()
    assert (repository / TOKENIZER_MODEL / "1" / "model.py").is_file()
    assert any(LICENSE in note for note in report.notes)
    assert any("serving fp32" in note for note in report.notes)


def test_onnx_matches_pytorch_at_fixed_noise(
    exported: tuple[Path, ExportReport], spec: TtsTokenizer, synthesizer: tuple[Any, Any]
) -> None:
    feeds = example_feeds(
        spec, ["The quick brown fox jumps.", "Over the lazy dog", "hi"], [1.0, 1.25, 0.8], [1, 2, 3]
    )
    expected = run_torch(synthesizer[1], feeds)
    actual = run_onnx(onnx_path(exported[0]), feeds, OUTPUT_NAMES)
    assert np.array_equal(expected[1], actual[1])  # identical lengths
    assert max_abs_diff(expected, actual) <= FP32_ATOL
    assert actual[0].dtype == np.float32 and actual[1].dtype == np.int64


def test_synthesizer_matches_transformers_vits_model(
    spec: TtsTokenizer, synthesizer: tuple[Any, Any]
) -> None:
    model, synth = synthesizer
    feeds = example_feeds(spec, ["Testing transformers parity"], [0.5], [42])
    reference, length = hf_reference(model, feeds, 0)
    ours = run_torch(synth, feeds)
    assert length == int(ours[1][0, 0])
    assert max_abs_diff([reference], [ours[0][0, :length]]) <= 1e-4


def test_length_scale_scales_duration_monotonically(
    exported: tuple[Path, ExportReport], spec: TtsTokenizer
) -> None:
    ids = spec.encode("A sentence long enough to average the rounding of each token.")
    lengths = []
    for scale in (0.5, 1.0, 1.5, 2.0):
        out = run_onnx(onnx_path(exported[0]), request_inputs(ids, scale, 0.667, 0.8, 5))
        lengths.append(int(out[1][0, 0]))
        assert lengths[-1] == predicted_frames(out[2][0, : len(ids)], scale) * HOP  # exact
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    assert 1.7 <= lengths[3] / lengths[1] <= 2.1  # length_scale 2.0 gives ~2x samples


def test_a_row_is_the_same_alone_and_in_a_padded_batch(
    exported: tuple[Path, ExportReport], spec: TtsTokenizer
) -> None:
    path = onnx_path(exported[0])
    batch = example_feeds(spec, ["short", "a much longer sentence than that"], [1.0, 1.0], [9, 8])
    together = run_onnx(path, batch, OUTPUT_NAMES)
    alone = run_onnx(path, example_feeds(spec, ["short"], [1.0], [9]), OUTPUT_NAMES)
    n = int(alone[1][0, 0])
    assert int(together[1][0, 0]) == n
    assert max_abs_diff([alone[0][0, :n]], [together[0][0, :n]]) <= 1e-4


def test_seed_and_noise_scale_change_the_speech(
    exported: tuple[Path, ExportReport], spec: TtsTokenizer
) -> None:
    path = onnx_path(exported[0])
    ids = spec.encode("seeded speech")
    a = run_onnx(path, request_inputs(ids, 1.0, 0.667, 0.8, 1))
    b = run_onnx(path, request_inputs(ids, 1.0, 0.667, 0.8, 1))
    c = run_onnx(path, request_inputs(ids, 1.0, 0.667, 0.8, 2))
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[2], c[2])  # other duration noise
    quiet = run_onnx(path, request_inputs(ids, 1.0, 0.0, 0.0, 1))
    again = run_onnx(path, request_inputs(ids, 1.0, 0.0, 0.0, 2))
    assert np.array_equal(quiet[0], again[0])  # no noise: the seed no longer matters


# ---------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("language", DEFAULT_LANGUAGES)
def test_committed_configs_are_the_rendered_template(language: str) -> None:
    folder = TEMPLATES / model_name(language)
    for path, gpu in ((folder / "config.pbtxt", False), (folder / "configs" / "gpu.pbtxt", True)):
        assert path.read_text() == render_config(language, gpu=gpu)
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == model_name(language)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size > 0
        assert [i.name for i in config.input] == list(INPUT_NAMES)
        assert [o.name for o in config.output] == list(OUTPUT_NAMES)
        policy = config.dynamic_batching.default_queue_policy
        assert policy.max_queue_size > 0 and policy.timeout_action == policy.REJECT
        kind = config.instance_group[0].kind
        assert kind == (
            model_config_pb2.ModelInstanceGroup.KIND_GPU
            if gpu
            else model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == (["tensorrt"] if gpu else [])


def test_tokenizer_model_config_is_a_python_model() -> None:
    text = (TEMPLATES / TOKENIZER_MODEL / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 0
    assert [i.name for i in config.input] == ["language"]


def test_unknown_language_in_export_list_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="supported: "):
        MmsTtsExporter(languages=("xyz",))


# ---------------------------------------------------------------------------------- client


class LocalTriton:
    """The Triton calls TtsClient makes, answered in-process from an exported repository."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.loaded: set[str] = set()
        self.calls: list[str] = []
        self.last_inference_ms = 0

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, NDArray[Any]]:
        assert model in self.loaded, f"{model} used before it was loaded"
        self.calls.append(model)
        if model == TOKENIZER_MODEL:
            code = inputs["language"].reshape(-1)[0].decode()
            folder = self.repository / TOKENIZER_MODEL / "1" / "tokenizers"
            if code:
                body = (folder / f"{code}.json").read_bytes()
            else:
                codes = sorted(p.stem for p in folder.glob("*.json"))
                body = json.dumps({"languages": codes}).encode()
            return {"tokenizer": np.array([body], dtype=np.object_)}
        path = self.repository / model / "1" / "model.onnx"
        return dict(zip(outputs, run_onnx(path, inputs, outputs), strict=True))

    async def load_model(self, model: str) -> None:
        self.loaded.add(model)

    async def unload_model(self, model: str) -> None:
        self.loaded.discard(model)

    async def repository_index(self) -> list[dict[str, Any]]:
        return [{"name": p.name} for p in self.repository.iterdir() if p.is_dir()]

    async def statistics(self, model: str) -> dict[str, Any]:
        return {"last_inference": str(self.last_inference_ms)}


async def test_client_rejects_bad_input_without_calling_triton(
    exported: tuple[Path, ExportReport],
) -> None:
    triton = LocalTriton(exported[0])
    client = TtsClient(triton)
    with pytest.raises(InvalidInput, match=r"supported: .*eng"):
        await client.synthesize("hello", "english")
    with pytest.raises(InvalidInput, match="speaking_rate"):
        await client.synthesize("hello", "eng", speaking_rate=0.0)
    empty = await client.synthesize("   ", "eng")
    assert empty.samples.shape == (0,) and empty.duration == 0.0
    assert triton.calls == []


async def test_client_synthesizes_and_reports_missing_voices(
    exported: tuple[Path, ExportReport], spec: TtsTokenizer
) -> None:
    triton = LocalTriton(exported[0])
    client = TtsClient(triton)
    with pytest.raises(
        ConfigurationError, match=r"no MMS-TTS voice for .spa.*exported voices: eng"
    ):
        await client.synthesize("hola", "spa")
    speech = await client.synthesize("Hello there", "eng", speaking_rate=1.25, seed=3)
    ids = spec.encode("Hello there")
    direct = run_onnx(onnx_path(exported[0]), request_inputs(ids, 0.8, 0.667, 0.8, 3))
    assert np.array_equal(speech.samples, direct[0][0, : int(direct[1][0, 0])])
    assert speech.sample_rate == 16_000 and speech.seed == 3 and speech.speaking_rate == 1.25
    assert MODEL in triton.loaded
    punctuation = await client.synthesize("?!", "eng")  # nothing speakable: no model call
    assert punctuation.duration == 0.0 and triton.calls.count(MODEL) == 1


async def test_synthesize_to_fit_lands_on_the_predicted_length(
    exported: tuple[Path, ExportReport],
) -> None:
    client = TtsClient(LocalTriton(exported[0]))
    text = "Fitting speech into the time slot of the original."
    natural = await client.synthesize(text, "eng", seed=11)
    for factor in (0.8, 1.12):
        target = natural.duration * factor
        fitted = await client.synthesize_to_fit(text, "eng", target, seed=11)
        assert fitted.duration <= target  # never overruns an achievable slot
        assert abs(fitted.duration - target) <= 0.05 * target
        # Not 1 / factor: per-token frames are rounded up, so the frame count is a step function.
        assert (fitted.speaking_rate > 1.0) == (factor < 1.0)
    too_short = await client.synthesize_to_fit(text, "eng", natural.duration / 3, seed=11)
    assert too_short.speaking_rate == pytest.approx(1.5)  # bounded by max_rate


def test_solve_length_scale_is_exact_on_the_step_function() -> None:
    durations = np.array([0.4, 2.2, 3.7, 1.0, 5.5], dtype=np.float32)
    for target in (14, 17, 20):
        scale = solve_length_scale(durations, target, 0.5, 2.0)
        assert predicted_frames(durations, scale) <= target
        assert predicted_frames(durations, scale * 1.01) > predicted_frames(durations, scale) or (
            scale == 2.0
        )
    assert solve_length_scale(durations, 2, 0.5, 2.0) == 0.5  # even the fastest overruns


async def test_pool_unloads_only_idle_models_not_in_use(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    triton = LocalTriton(tmp_path)
    now = [1000.0]
    pool = ModelPool(triton, idle_seconds=10, pinned=["c"], clock=lambda: now[0])
    for name in ("a", "b", "c"):
        await pool.ensure_loaded(name)
    with pytest.raises(ConfigurationError, match="'zzz' is not in Triton's model repository"):
        await pool.ensure_loaded("zzz")
    now[0] += 11
    async with pool.using("a"):
        assert await pool.unload_idle() == ["b"]  # a in use, c pinned
    assert await pool.unload_idle() == []  # a was just used
    now[0] += 11
    triton.last_inference_ms = int(now[0] * 1000) - 2000  # another worker used it 2 s ago
    assert await pool.unload_idle() == []
    triton.last_inference_ms = 0
    assert await pool.unload_idle() == ["a"]
    assert triton.loaded == {"c"} and pool.loaded == frozenset({"c"})
