"""Whisper: encoder + decoder-with-KV-cache ONNX graphs, tokenizer and decoding facts for the BLS.

Writes one Triton model, ``whisper`` (python BLS, committed model.py): features, language
detection, batched greedy decoding with timestamps, running two ONNX graphs in onnxruntime
sessions of its own (``whisper_runtime.OrtGraphs``), written into its version folder:

* ``encoder*.onnx``: ``input_features`` [B, n_mels, 3000] -> ``last_hidden_state`` and the
  cross-attention ``cross_key.i`` / ``cross_value.i`` of every decoder layer;
* ``decoder*.onnx``: one step with a KV cache (see ``whisper_graphs``);

``<graph>_fp32.onnx`` always (the decoder's tied output projection reads the token embedding:
stored once); ``<graph>.onnx`` is what the CPU profile runs: weight-only int8 when it passes
``whisper_int8.judge`` on speech (tokens as fp32's, batch-invariant), else a hard link to the
fp32 file; the GPU target adds ``<graph>_fp16.onnx``. Plus ``1/tokenizer/`` (HF tokenizer files
+ ``whisper.json`` facts).

Why not the graphs as served onnxruntime models called by the BLS: the cross-attention K/V are
an input of every decoder step, and through Triton they crossed the python backend's shared
memory twice per step (590 MB per step for 16 windows at whisper-base sizes): the decode ran
2.4-3x slower than the same loop in-process. In the BLS's own sessions they stay put.

Checks on every export, on spoken sentences (espeak-ng; synthetic tones where it is absent, with a
note): encoder and decoder fp32 against PyTorch, relative to each output's scale (the decoder
also against the transformers model itself, so the flat re-layout is proven equal); the ONNX
greedy loop (the same code the BLS runs) against
``WhisperForConditionalGeneration.generate(return_timestamps=True)``: identical tokens; int8 at
the task level (``whisper_int8``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export import whisper_int8
from polydub.export.hub import pretrained_args
from polydub.export.onnx_tools import (
    check_parity,
    export_module,
    quantize_weights_int8,
    rms_rel_diff,
    tie_transposed_weights,
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
)
from polydub.export.whisper_graphs import (
    DECODER_MODEL,
    ENCODER_MODEL,
    DecoderGraph,
    EncoderGraph,
    decoder_spec,
    encoder_spec,
)
from polydub.languages import LANGUAGES

__all__ = [
    "BLS_MODEL",
    "DECODER_MODEL",
    "ENCODER_MODEL",
    "FP16_RTOL",
    "GRAPH_FILES",
    "MODELS",
    "TOKENIZER_DIR",
    "OrtWhisper",
    "WhisperExporter",
    "check_audio",
    "check_graphs",
    "consolidate_external_data",
    "graph_path",
    "hf_greedy_tokens",
    "load_checkpoint",
    "make_facts",
    "reference_audio",
    "runtime",
    "torch_references",
]

BLS_MODEL = "whisper"
MODELS = [BLS_MODEL]
# Served models of earlier exports (the graphs are files of the BLS model now): removed.
STALE_MODELS = ("whisper_encoder", "whisper_decoder")
GRAPH_FILES = {ENCODER_MODEL: "encoder", DECODER_MODEL: "decoder"}  # graph -> file stem
RUNTIME_FILE = SOURCE_REPOSITORY / BLS_MODEL / "1" / "whisper_runtime.py"
TOKENIZER_DIR = "tokenizer"  # under whisper/1/, git-ignored
CHECKPOINTS = {
    Preset.SMALL: Checkpoint("openai/whisper-base", license="MIT"),
    Preset.LARGE: Checkpoint("openai/whisper-large-v3", license="MIT"),
}
TINY_NAME = "tiny-random-whisper"
FP16_RTOL = 0.1  # fp16 weights and activations vs fp32 PyTorch, of each output's max |value|
CHECK_NEW_TOKENS = 48  # greedy parity: enough steps to exercise every timestamp rule

Array = NDArray[Any]


@cache
def runtime() -> ModuleType:
    """``whisper_runtime`` from the committed BLS model folder (numpy-only, no package import)."""
    name = "polydub_whisper_runtime"
    spec = importlib.util.spec_from_file_location(name, RUNTIME_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {RUNTIME_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------ checkpoints


def load_checkpoint(checkpoint: Checkpoint, tokenizer_dir: Path) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, generation config, checkpoint name); the tokenizer is saved too."""
    if checkpoint.random:
        from polydub.export import whisper_tiny

        tokenizer = whisper_tiny.build_tokenizer(tokenizer_dir)
        model, generation = whisper_tiny.build_model(tokenizer)
        return model, tokenizer, generation, TINY_NAME
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizer

    ref, kwargs = pretrained_args(checkpoint)
    model = WhisperForConditionalGeneration.from_pretrained(ref, **kwargs).eval()
    tokenizer = WhisperTokenizer.from_pretrained(ref, **kwargs)
    generation = GenerationConfig.from_pretrained(ref, **kwargs)
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigurationError(
            f"{checkpoint.describe()}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocabulary {model.config.vocab_size}: they do not belong together",
            code="tokenizer_mismatch",
        )
    model.generation_config = generation
    tokenizer.save_pretrained(str(tokenizer_dir))
    return model, tokenizer, generation, checkpoint.describe()


def make_facts(model: Any, tokenizer: Any, generation: Any, checkpoint: str) -> Any:
    """What the BLS needs: dims and special token ids. Detection considers only the languages
    polydub serves end to end (polydub.languages), so it always names a supported language."""
    rt = runtime()
    ids = tokenizer.convert_tokens_to_ids
    unk = tokenizer.unk_token_id
    no_speech = ids("<|nospeech|>")
    if no_speech in (None, unk):
        no_speech = ids("<|nocaptions|>")
    languages = {}
    for lang in LANGUAGES.values():
        token = ids(f"<|{lang.whisper}|>")
        if token is not None and token != unk:
            languages[lang.whisper] = int(token)
    cfg = model.config
    no_timestamps = int(ids("<|notimestamps|>"))
    return rt.WhisperFacts(
        checkpoint=checkpoint,
        n_mels=int(cfg.num_mel_bins),
        decoder_layers=int(cfg.decoder_layers),
        decoder_heads=int(cfg.decoder_attention_heads),
        head_dim=int(cfg.d_model // cfg.decoder_attention_heads),
        vocab_size=int(cfg.vocab_size),
        max_target_positions=int(cfg.max_target_positions),
        eot=int(ids("<|endoftext|>")),
        sot=int(ids("<|startoftranscript|>")),
        translate=int(ids("<|translate|>")),
        transcribe=int(ids("<|transcribe|>")),
        no_speech=int(no_speech),
        no_timestamps=no_timestamps,
        timestamp_begin=no_timestamps + 1,
        languages=languages,
        suppress_tokens=tuple(int(t) for t in generation.suppress_tokens or ()),
        begin_suppress_tokens=tuple(int(t) for t in generation.begin_suppress_tokens or ()),
        max_initial_timestamp_index=getattr(generation, "max_initial_timestamp_index", 50),
    )


def check_audio() -> list[Array]:
    """Fixed synthetic clips: voiced-like tones (7.3 s), noise (2.1 s), silence (1 s)."""
    return whisper_int8.synthetic_clips()


def reference_audio() -> tuple[list[Array], str | None]:
    """The clips the export checks PyTorch parity and greedy tokens on: two spoken sentences
    (espeak-ng, two voices) and the noise clip; without espeak-ng the synthetic clips, and a
    note saying so."""
    synthetic = check_audio()
    spoken = whisper_int8.check_clips(2)
    if not spoken.speech:
        return synthetic, "whisper parity checked on synthetic tones: espeak-ng is not installed"
    return [*spoken.audios, synthetic[1]], None


# ------------------------------------------------------------------ in-process backend


def graph_path(repository: Path, graph: str, variant: str = "") -> Path:
    """``<repository>/whisper/1/<encoder|decoder><variant>.onnx``; variant "", "_fp32", "_fp16"."""
    return repository / BLS_MODEL / "1" / f"{GRAPH_FILES[graph]}{variant}.onnx"


class OrtWhisper:
    """The two exported graphs in this process, as a ``DecoderBackend``: the served model's own
    ``whisper_runtime.OrtGraphs`` (the same sessions, io_binding and loop as the BLS), so the
    in-process reference and the served model differ by the serving only."""

    def __init__(
        self,
        encoder: Path,
        decoder: Path,
        facts: Any,
        threads: int = 1,
        tokenizer_dir: Path | None = None,
    ) -> None:
        self.graphs = runtime().OrtGraphs(encoder, decoder, facts, threads=threads)
        self.facts = facts
        self.tokenizer_dir = tokenizer_dir

    @classmethod
    def from_repository(cls, repository: Path, variant: str = "", threads: int = 1) -> OrtWhisper:
        tokenizer_dir = repository / BLS_MODEL / "1" / TOKENIZER_DIR
        return cls(
            graph_path(repository, ENCODER_MODEL, variant),
            graph_path(repository, DECODER_MODEL, variant),
            runtime().WhisperFacts.load(tokenizer_dir / runtime().FACTS_FILE),
            threads=threads,
            tokenizer_dir=tokenizer_dir,
        )

    def encode(self, features: Array) -> Any:
        return self.graphs.encode(features)

    def step(self, input_ids: Array, past: Any | None, cross: Any) -> tuple[Array, Any]:
        logits, presents = self.graphs.step(input_ids, past, cross)
        return logits, presents

    def select(self, state: Any, rows: Array) -> Any:
        return self.graphs.select(state, rows)

    def decode(
        self, audios: Sequence[Array], options: Sequence[Any], max_new_tokens: int
    ) -> list[Any]:
        rt = runtime()
        features = rt.log_mel_spectrogram(audios, self.facts.n_mels)
        return list(rt.greedy_decode(self, features, options, self.facts, max_new_tokens))


# ------------------------------------------------------------------------ checks


@dataclass
class References:
    """PyTorch outputs on fixed inputs, computed once and compared with any exported graphs."""

    features: Array
    encoder: list[Array]  # EncoderGraph outputs
    decoder_feeds: list[dict[str, Array]]  # three steps: [sot] (empty past), [lang, task], [ts]
    decoder: list[list[Array]]  # DecoderGraph outputs per step
    hf_logits: list[Array]  # transformers' own forward: last-position logits per step


def torch_references(model: Any, facts: Any, features: Array) -> References:
    import torch
    from transformers import modeling_outputs

    outputs_module: Any = modeling_outputs  # untyped
    n = facts.decoder_layers
    names = [f"{{}}_{k}.{i}" for i in range(n) for k in ("key", "value")]
    decoder = DecoderGraph(model).eval()
    with torch.inference_mode():
        encoder = [o.numpy() for o in EncoderGraph(model).eval()(torch.from_numpy(features))]
        hidden = outputs_module.BaseModelOutput(last_hidden_state=torch.from_numpy(encoder[0]))
        batch = features.shape[0]
        past = [np.zeros((batch, facts.decoder_heads, 0, facts.head_dim), np.float32)] * (2 * n)
        steps = [
            np.full((batch, 1), facts.sot, np.int64),
            np.array([[next(iter(facts.languages.values())), facts.transcribe]] * batch, np.int64),
            np.full((batch, 1), facts.timestamp_begin, np.int64),
        ]
        refs = References(features, encoder, [], [], [])
        prefix = np.zeros((batch, 0), np.int64)
        for ids in steps:
            feed: dict[str, Array] = {"input_ids": ids}
            feed.update({name.format("past"): p for name, p in zip(names, past, strict=True)})
            feed.update(
                {name.format("cross"): c for name, c in zip(names, encoder[1:], strict=True)}
            )
            outputs = [o.numpy() for o in decoder(*(torch.from_numpy(v) for v in feed.values()))]
            prefix = np.concatenate([prefix, ids], axis=1)
            hf = model(encoder_outputs=hidden, decoder_input_ids=torch.from_numpy(prefix))
            refs.decoder_feeds.append(feed)
            refs.decoder.append(outputs)
            refs.hf_logits.append(hf.logits[:, -1].numpy())
            past = outputs[1:]
    return refs


def check_graphs(
    refs: References,
    encoder_path: Path,
    decoder_path: Path,
    diff: Callable[[Sequence[Array], Sequence[Array]], float] | None = None,
) -> tuple[float, float]:
    """Differences of the encoder and the decoder on fixed inputs, relative to each output's
    scale: ``max_rel_diff`` (worst element over the output's max |value|) unless ``diff`` says
    otherwise (``rms_rel_diff`` for int8, whose single outlier elements say little).

    Judged on what the served model reads: the encoder's cross-attention K/V (its
    ``last_hidden_state`` is an output for checks only), the decoder's logits and K/V cache. The
    decoder's reference is our flat DecoderGraph, which must itself match transformers'
    WhisperForConditionalGeneration forward: the larger of both differences is returned.
    """
    from polydub.export.onnx_tools import max_rel_diff, run_onnx

    measure = diff or max_rel_diff
    encoder = run_onnx(encoder_path, {"input_features": refs.features})
    encoder_diff = measure(refs.encoder[1:], encoder[1:])
    decoder_diff = 0.0
    for feed, expected, hf in zip(refs.decoder_feeds, refs.decoder, refs.hf_logits, strict=True):
        decoder_diff = max(decoder_diff, measure(expected, run_onnx(decoder_path, feed)))
        decoder_diff = max(decoder_diff, max_rel_diff([hf], expected[:1]))
    return encoder_diff, decoder_diff


def hf_greedy_tokens(
    model: Any,
    features: Array,
    language: str | None,
    task: str,
    max_new_tokens: int,
    languages: Sequence[str] | None = None,
) -> list[list[int]]:
    """One window's greedy decode by transformers: ``detect_language``, then the plain
    ``GenerationMixin.generate`` with Whisper's own logits processors (begin-suppress, suppress,
    ``WhisperTimeStampLogitsProcessor``) in the order Whisper's generate installs them.

    Whisper's ``generate`` itself is not the reference: even for a short clip it runs its
    long-form seek loop (re-decoding from the last timestamp), which a single window doesn't do.
    ``languages``: the Whisper codes detection may pick (as the BLS: polydub's); None: all.
    """
    import copy

    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )
    from transformers.utils import logging as transformers_logging

    generation = copy.deepcopy(model.generation_config)
    if languages is not None:
        generation.lang_to_id = {f"<|{c}|>": generation.lang_to_id[f"<|{c}|>"] for c in languages}
    task_id = generation.task_to_id[task]
    processors = LogitsProcessorList(
        [
            SuppressTokensAtBeginLogitsProcessor(generation.begin_suppress_tokens, begin_index=3),
            SuppressTokensLogitsProcessor(generation.suppress_tokens),
            WhisperTimeStampLogitsProcessor(generation, begin_index=3),
        ]
    )
    generation.suppress_tokens = None
    generation.begin_suppress_tokens = None
    # generate() merges the model's own suppress lists back in and warns that ours take
    # precedence (they are the same lists): quiet for the duration.
    hf_logging: Any = transformers_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _generate_rows(
            model, features, language, task_id, generation, processors, max_new_tokens
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def _generate_rows(
    model: Any,
    features: Array,
    language: str | None,
    task_id: int,
    generation: Any,
    processors: Any,
    max_new_tokens: int,
) -> list[list[int]]:
    import torch
    from transformers import GenerationMixin

    eot = generation.eos_token_id
    out: list[list[int]] = []
    with torch.inference_mode():
        for row in range(features.shape[0]):
            feats = torch.from_numpy(features[row : row + 1])
            encoded = model.get_encoder()(feats)
            if language is None:
                lang_id = int(
                    model.detect_language(encoder_outputs=encoded, generation_config=generation)[0]
                )
            else:
                lang_id = generation.lang_to_id[f"<|{language}|>"]
            prompt = torch.tensor([[generation.decoder_start_token_id, lang_id, task_id]])
            sequences = GenerationMixin.generate(
                model,
                encoder_outputs=encoded,
                decoder_input_ids=prompt,
                logits_processor=processors,
                generation_config=generation,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
            tokens = sequences[0, 3:].tolist()
            out.append(tokens[: tokens.index(eot)] if eot in tokens else tokens)
    return out


# ------------------------------------------------------------------------ the exporter


def _export_graph(graph: Any, args: tuple[Any, ...], spec: GraphSpec, path: Path) -> int:
    """Export one graph; returns the bytes ``tie_embedding`` saved."""
    import warnings

    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python values
        export_module(graph, args, spec, path)
    extra = set(path.parent.iterdir()) - before - {path}
    if extra:
        consolidate_external_data(path, extra)
    return tie_embedding(path)


def tie_embedding(path: Path) -> int:
    """The decoder's output projection is its token embedding transposed (tied weights), which
    the exporter's constant folding stores a second time: 106 MB of whisper-base's 302 MB
    decoder. ``tie_transposed_weights`` makes it read the embedding itself. Returns bytes saved."""
    import onnx

    model = onnx.load(str(path))
    saved = tie_transposed_weights(model)
    if saved:
        data = path.with_name(path.name + ".data")
        large = data.exists()
        data.unlink(missing_ok=True)
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    return saved


def consolidate_external_data(path: Path, pieces: set[Path]) -> None:
    """Graphs over 2 GB (whisper-large: encoder and decoder alike) are written by torch with
    one external file per weight; keep one ``<model>.onnx.data`` beside the model instead."""
    import onnx

    model = onnx.load(str(path))  # reads the external pieces
    for piece in pieces:
        piece.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


def _dummy_inputs(model: Any, facts: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    import torch

    features = torch.zeros((1, facts.n_mels, 3000))
    n, h, dh = facts.decoder_layers, facts.decoder_heads, facts.head_dim
    ids = torch.full((1, 2), facts.sot, dtype=torch.long)
    past = [torch.zeros((1, h, 3, dh)) for _ in range(2 * n)]
    cross = [torch.zeros((1, h, 1500, dh)) for _ in range(2 * n)]
    return (features,), (ids, *past, *cross)


class WhisperExporter:
    name = "whisper"

    choosable = True

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        if preset is Preset.TINY:
            return {BLS_MODEL: Checkpoint(RANDOM, "MIT")}
        return {BLS_MODEL: CHECKPOINTS[preset]}

    def optional(self) -> dict[str, Checkpoint]:
        return {}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        checkpoint = checkpoints[BLS_MODEL]
        return self.export_loaded(
            lambda tokenizer_dir: load_checkpoint(checkpoint, tokenizer_dir), target, repository
        )

    def export_loaded(
        self, load: Callable[[Path], tuple[Any, Any, Any, str]], target: Target, repository: Path
    ) -> ExportReport:
        """Export what ``load(tokenizer_dir)`` returns: (model, tokenizer, generation config,
        checkpoint name), the tokenizer saved into ``tokenizer_dir``. ``export`` loads a preset's
        checkpoint; benchmarks pass a random model of real dimensions (bench/asr.py)."""
        started = time.perf_counter()
        rt = runtime()
        copy_committed(repository, MODELS)
        bls_dir = version_dir(repository, BLS_MODEL)
        tokenizer_dir = bls_dir / TOKENIZER_DIR
        if tokenizer_dir.exists():
            shutil.rmtree(tokenizer_dir)
        model, tokenizer, generation, checkpoint = load(tokenizer_dir)
        facts = make_facts(model, tokenizer, generation, checkpoint)
        (tokenizer_dir / rt.FACTS_FILE).write_text(facts.to_json(), encoding="utf-8")
        report = ExportReport(family=self.name, checkpoint=checkpoint, models=list(MODELS))
        report.retired.extend(STALE_MODELS)

        cfg = model.config
        specs = {
            ENCODER_MODEL: encoder_spec(
                facts.n_mels, cfg.d_model, facts.decoder_layers, facts.decoder_heads
            ),
            DECODER_MODEL: decoder_spec(
                cfg.d_model, facts.decoder_layers, facts.decoder_heads, facts.vocab_size
            ),
        }
        enc_args, dec_args = _dummy_inputs(model, facts)
        paths = {}
        for name, graph, args in (
            (ENCODER_MODEL, EncoderGraph(model), enc_args),
            (DECODER_MODEL, DecoderGraph(model), dec_args),
        ):
            path = graph_path(repository, name, "_fp32")
            saved = _export_graph(graph, args, specs[name], path)
            paths[name] = path
            if saved:
                report.notes.append(
                    f"{name}: the output projection reads the token embedding, stored once: "
                    f"{saved / 1e6:.1f} MB less, fp32 graph {path.stat().st_size / 1e6:.1f} MB"
                )

        audio, fallback = reference_audio()
        if fallback:
            report.notes.append(fallback)
        features = rt.log_mel_spectrogram(audio, facts.n_mels)
        refs = torch_references(model, facts, features)
        enc_diff, dec_diff = check_graphs(refs, paths[ENCODER_MODEL], paths[DECODER_MODEL])
        # max_abs_diff holds what the spec judges: relative differences (GraphSpec.fp32_rtol)
        report.max_abs_diff[ENCODER_MODEL] = check_parity(
            ENCODER_MODEL, enc_diff, *specs[ENCODER_MODEL].tolerance("fp32")
        )
        report.max_abs_diff[DECODER_MODEL] = check_parity(
            DECODER_MODEL, dec_diff, *specs[DECODER_MODEL].tolerance("fp32")
        )

        # Greedy tokens: our loop over the fp32 graphs vs transformers' generate.
        fp32 = OrtWhisper(paths[ENCODER_MODEL], paths[DECODER_MODEL], facts)
        cases = [("en", "transcribe"), (None, "transcribe"), (None, "transcribe")]
        ours = fp32.decode(
            audio, [rt.DecodeOptions(lang, task) for lang, task in cases], CHECK_NEW_TOKENS
        )
        same = True
        for row, ((lang, task), result) in enumerate(zip(cases, ours, strict=True)):
            [theirs] = hf_greedy_tokens(
                model, features[row : row + 1], lang, task, CHECK_NEW_TOKENS, list(facts.languages)
            )
            same = same and theirs == result.tokens
        report.token_match[BLS_MODEL] = same
        if not same:
            raise AssertionError("whisper: the ONNX greedy loop and transformers' generate differ")

        if target is Target.CPU:
            self._place_int8(paths, specs, refs, facts, report)
        else:
            self._place_fp16(paths, refs, facts, report)
        report.notes.append(f"export took {time.perf_counter() - started:.1f}s")
        return report

    def _place_int8(
        self,
        paths: dict[str, Path],
        specs: dict[str, GraphSpec],
        refs: References,
        facts: Any,
        report: ExportReport,
    ) -> whisper_int8.Int8Verdict:
        """<graph>.onnx = the int8 graphs when they pass ``whisper_int8.judge`` (tokens on
        speech, batch invariance), else the fp32 graphs themselves (hard links)."""
        int8 = {name: _variant(path, "_int8") for name, path in paths.items()}
        for name, path in paths.items():
            quantize_weights_int8(
                path, int8[name], whisper_int8.BLOCK_SIZE, whisper_int8.ACCURACY_LEVEL
            )
        rms = check_graphs(refs, int8[ENCODER_MODEL], int8[DECODER_MODEL], rms_rel_diff)
        # what GraphSpec.int8_rms_rtol judges (the report's field name is older)
        report.int8_max_abs_diff = {ENCODER_MODEL: rms[0], DECODER_MODEL: rms[1]}
        rms_rtol = min(specs[name].tolerance("int8")[0] for name in paths)
        tokenizer_dir = paths[ENCODER_MODEL].parent / TOKENIZER_DIR
        detokenizer = runtime().Detokenizer.load(str(tokenizer_dir), facts.eot)
        verdict = whisper_int8.judge(
            self._greedy(int8[ENCODER_MODEL], int8[DECODER_MODEL], facts),
            self._greedy(paths[ENCODER_MODEL], paths[DECODER_MODEL], facts),
            whisper_int8.check_clips(),
            rms,
            rms_rtol,
            detokenizer.decode,
        )
        for name, path in paths.items():
            served = _variant(path, "")
            served.unlink(missing_ok=True)
            if verdict.accepted:
                int8[name].replace(served)
            else:  # the fp32 graph itself, linked: no second copy of its bytes
                int8[name].unlink()
                int8[name].with_name(int8[name].name + ".data").unlink(missing_ok=True)
                served.hardlink_to(path)
        report.precision[BLS_MODEL] = "int8" if verdict.accepted else "fp32"
        report.notes.append(verdict.note())
        return verdict

    @staticmethod
    def _greedy(encoder: Path, decoder: Path, facts: Any) -> whisper_int8.Decode:
        """English greedy tokens of a batch of clips, as the BLS decodes them (2 threads)."""
        graphs = OrtWhisper(encoder, decoder, facts, threads=2)
        options = runtime().DecodeOptions("en", "transcribe")

        def decode(audios: Sequence[Array]) -> list[list[int]]:
            results = graphs.decode(audios, [options] * len(audios), whisper_int8.MAX_NEW_TOKENS)
            return [r.tokens for r in results]

        return decode

    def _place_fp16(
        self, paths: dict[str, Path], refs: References, facts: Any, report: ExportReport
    ) -> None:
        """GPU: <graph>_fp16.onnx (named by gpu.pbtxt) with fp32 inputs/outputs; <graph>.onnx
        stays fp32 so the CPU profile loads too. The fp16 graphs are checked here on the CPU provider.

        onnxruntime's own float16 converter is used: onnxconverter-common's (onnx_tools) breaks the
        encoder, whose last_hidden_state is both a graph output and the input of the K/V
        projections (a MatMul left with mixed fp32/fp16 inputs).
        """
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16 = {name: _variant(path, "_fp16") for name, path in paths.items()}
        report.precision[BLS_MODEL] = "fp16"
        for name, path in paths.items():
            served = _variant(path, "")
            served.unlink(missing_ok=True)
            served.hardlink_to(path)
            converted = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
            onnx.save(converted, str(fp16[name]))
        enc_diff, dec_diff = check_graphs(refs, fp16[ENCODER_MODEL], fp16[DECODER_MODEL])
        check_parity(f"{ENCODER_MODEL} fp16", enc_diff, FP16_RTOL, "rel")
        check_parity(f"{DECODER_MODEL} fp16", dec_diff, FP16_RTOL, "rel")
        report.notes.append(
            f"whisper fp16 (<graph>_fp16.onnx) max relative |Δ| vs torch: encoder {enc_diff:.2g}, "
            f"decoder {dec_diff:.2g} (tolerance {FP16_RTOL})"
        )


def _variant(fp32: Path, variant: str) -> Path:
    """``encoder_fp32.onnx`` -> ``encoder<variant>.onnx`` beside it."""
    stem = fp32.name.removesuffix("_fp32.onnx")
    return fp32.with_name(f"{stem}{variant}.onnx")
