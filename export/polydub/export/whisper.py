"""Whisper: encoder + decoder-with-KV-cache ONNX graphs, tokenizer and decoding facts for the BLS.

Writes one Triton model, ``whisper`` (python, ``polydub.serving.whisper_service``): features,
language detection, batched greedy decoding with timestamps, running two ONNX graphs in
onnxruntime sessions of its own (``whisper_ort.OrtGraphs``), written into its version folder:

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

Checks on every export (``whisper_reference``), on spoken sentences (espeak-ng; synthetic tones
where it is absent, with a note): encoder and decoder fp32 against PyTorch, relative to each
output's scale (the decoder also against the transformers model itself, so the flat re-layout is
proven equal); the ONNX greedy loop (the same code the BLS runs) against
``WhisperForConditionalGeneration.generate(return_timestamps=True)``: identical tokens; int8 at
the task level (``whisper_int8``).
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polydub.errors import ConfigurationError
from polydub.export import whisper_int8
from polydub.export.hub import pretrained_args
from polydub.export.memory import free_weights, release_memory
from polydub.export.onnx_tools import (
    check_parity,
    convert_fp16,
    export_module,
    quantize_weights_int8,
    rms_rel_diff,
    tie_graph,
)
from polydub.export.repository import version_dir
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
    BLS_MODEL,
    DECODER_MODEL,
    ENCODER_MODEL,
    DecoderGraph,
    EncoderGraph,
    decoder_spec,
    encoder_spec,
    graph_path,
)
from polydub.export.whisper_reference import (
    Array,
    OrtWhisper,
    References,
    check_graphs,
    hf_greedy_tokens,
    reference_audio,
    torch_references,
)
from polydub.languages import LANGUAGES
from polydub.serving.whisper_decode import DecodeOptions
from polydub.serving.whisper_features import log_mel_spectrogram
from polydub.serving.whisper_service import TOKENIZER_DIR  # under whisper/1/, git-ignored
from polydub.serving.whisper_text import FACTS_FILE, Detokenizer, WhisperFacts

MODELS = [BLS_MODEL]
# Served models of earlier exports (the graphs are files of the BLS model now): removed.
STALE_MODELS = ("whisper_encoder", "whisper_decoder")
CHECKPOINTS = {
    Preset.SMALL: Checkpoint("openai/whisper-base", license="MIT"),
    Preset.LARGE: Checkpoint("openai/whisper-large-v3", license="MIT"),
}
TINY_NAME = "tiny-random-whisper"
FP16_RTOL = 0.1  # fp16 weights and activations vs fp32 PyTorch, of each output's max |value|
CHECK_NEW_TOKENS = 48  # greedy parity: enough steps to exercise every timestamp rule


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


def make_facts(model: Any, tokenizer: Any, generation: Any, checkpoint: str) -> WhisperFacts:
    """What the BLS needs: dims and special token ids. Detection considers only the languages
    polydub serves end to end (polydub.languages), so it always names a supported language."""
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
    return WhisperFacts(
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


# ------------------------------------------------------------------------ the exporter


def _export_graph(graph: Any, args: tuple[Any, ...], spec: GraphSpec, path: Path) -> int:
    """Export one graph; returns the bytes ``tie_graph`` saved."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python values
        export_module(graph, args, spec, path)
    return tie_graph(path)


def _dummy_inputs(model: Any, facts: WhisperFacts) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
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
            lambda tokenizer_dir: load_checkpoint(checkpoint, tokenizer_dir),
            target,
            repository,
            release_weights=True,
        )

    def export_loaded(
        self,
        load: Callable[[Path], tuple[Any, Any, Any, str]],
        target: Target,
        repository: Path,
        *,
        release_weights: bool = False,
    ) -> ExportReport:
        """Export what ``load(tokenizer_dir)`` returns: (model, tokenizer, generation config,
        checkpoint name), the tokenizer saved into ``tokenizer_dir``. ``export`` loads a preset's
        checkpoint; benchmarks pass a random model of real dimensions (bench/asr.py).
        ``release_weights``: the model's weights are freed once the graphs are checked (the
        model is then unusable): placing the graphs (int8 or fp16) does not read them."""
        started = time.perf_counter()
        bls_dir = version_dir(repository, BLS_MODEL)
        tokenizer_dir = bls_dir / TOKENIZER_DIR
        if tokenizer_dir.exists():
            shutil.rmtree(tokenizer_dir)
        model, tokenizer, generation, checkpoint = load(tokenizer_dir)
        facts = make_facts(model, tokenizer, generation, checkpoint)
        (tokenizer_dir / FACTS_FILE).write_text(facts.to_json(), encoding="utf-8")
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

        release_memory(self.name, "graphs written")
        audio, fallback = reference_audio()
        if fallback:
            report.notes.append(fallback)
        features = log_mel_spectrogram(audio, facts.n_mels)
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
            audio, [DecodeOptions(lang, task) for lang, task in cases], CHECK_NEW_TOKENS
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
        del fp32  # its sessions hold a copy of every fp32 weight
        if release_weights:
            free_weights(model)
        release_memory(self.name, "graphs checked")

        if target is Target.CPU:
            self._place_int8(paths, specs, refs, facts, report)
        else:
            self._place_fp16(paths, refs, facts, report)
        release_memory(self.name, "graphs placed")
        report.notes.append(f"export took {time.perf_counter() - started:.1f}s")
        return report

    def _place_int8(
        self,
        paths: dict[str, Path],
        specs: dict[str, GraphSpec],
        refs: References,
        facts: WhisperFacts,
        report: ExportReport,
    ) -> whisper_int8.Int8Verdict:
        """<graph>.onnx = the int8 graphs when they pass ``whisper_int8.judge`` (tokens on
        speech, batch invariance), else the fp32 graphs themselves (hard links)."""
        int8 = {name: _variant(path, "_int8") for name, path in paths.items()}
        for name, path in paths.items():
            quantize_weights_int8(
                path, int8[name], whisper_int8.BLOCK_SIZE, whisper_int8.ACCURACY_LEVEL
            )
        release_memory(self.name, "int8 graphs written")
        rms = check_graphs(refs, int8[ENCODER_MODEL], int8[DECODER_MODEL], rms_rel_diff)
        # what GraphSpec.int8_rms_rtol judges (the report's field name is older)
        report.int8_max_abs_diff = {ENCODER_MODEL: rms[0], DECODER_MODEL: rms[1]}
        rms_rtol = min(specs[name].tolerance("int8")[0] for name in paths)
        tokenizer_dir = paths[ENCODER_MODEL].parent / TOKENIZER_DIR
        detokenizer = Detokenizer.load(tokenizer_dir, facts.eot)
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
    def _greedy(encoder: Path, decoder: Path, facts: WhisperFacts) -> whisper_int8.Decode:
        """English greedy tokens of a batch of clips, as the BLS decodes them (2 threads)."""
        graphs = OrtWhisper(encoder, decoder, facts, threads=2)
        options = DecodeOptions("en", "transcribe")

        def decode(audios: Sequence[Array]) -> list[list[int]]:
            results = graphs.decode(audios, [options] * len(audios), whisper_int8.MAX_NEW_TOKENS)
            return [r.tokens for r in results]

        return decode

    def _place_fp16(
        self, paths: dict[str, Path], refs: References, facts: WhisperFacts, report: ExportReport
    ) -> None:
        """GPU: <graph>_fp16.onnx (named by gpu.pbtxt) with fp32 inputs/outputs; <graph>.onnx
        stays fp32 so the CPU profile loads too. The fp16 graphs are checked here on the CPU
        provider (onnx_tools.convert_fp16: onnxruntime's converter).
        """
        fp16 = {name: _variant(path, "_fp16") for name, path in paths.items()}
        report.precision[BLS_MODEL] = "fp16"
        for name, path in paths.items():
            served = _variant(path, "")
            served.unlink(missing_ok=True)
            served.hardlink_to(path)
            convert_fp16(path, fp16[name])
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
