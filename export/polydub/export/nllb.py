"""NLLB-200 (M2M100 architecture) exporter: the encoder and KV-cached decoder graphs
(``nllb_graphs``) checked against PyTorch and transformers' ``generate`` (``nllb_reference``),
placed as files of the python model ``nllb`` that runs them in its own onnxruntime sessions
(``polydub.serving.nllb_service``), with the tokenizer and the search's ``GenerationConfig``.

CPU: ``encoder.onnx`` / ``decoder.onnx`` are the dynamic int8 graphs when they stay within
``INT8_RTOL`` of fp32 (``*_fp32.onnx`` beside them), else fp32; GPU: ``*_fp16.onnx`` (named by
configs/gpu.pbtxt) beside the fp32 ``encoder.onnx`` / ``decoder.onnx``. The Triton models
``nllb_encoder`` / ``nllb_decoder`` of earlier exports are retired.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from polydub.errors import ConfigurationError
from polydub.export.hub import pretrained_args
from polydub.export.memory import free_weights, release_memory
from polydub.export.nllb_graphs import (
    BLS,
    DECODER,
    ENCODER,
    FP16_RTOL,
    TOP_K,
    decoder_spec,
    encoder_spec,
    generation_config,
    wrappers,
)
from polydub.export.nllb_reference import (
    float_diff,
    hf_generate,
    onnx_search,
    onnx_step_log_probs,
    sample_batch,
    sample_decoder_feeds,
    torch_encoder_outputs,
    torch_log_probs_at,
)
from polydub.export.onnx_tools import (
    check_parity,
    convert_fp16,
    copy_graph,
    export_module,
    graph_bytes,
    max_abs_diff,
    quantize_int8,
    run_onnx,
    tie_graph,
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
from polydub.serving.nllb_search import GenerationConfig
from polydub.serving.nllb_service import TOKENIZER_DIR  # under nllb/1/ (git-ignored)

FAMILY = "nllb"
LICENSE = "CC-BY-NC-4.0"  # the NLLB-200 weights: non-commercial use only
CHECKPOINTS = {
    Preset.SMALL: Checkpoint("facebook/nllb-200-distilled-600M", LICENSE),
    Preset.LARGE: Checkpoint("facebook/nllb-200-3.3B", LICENSE),
}
# Served models of earlier exports (the graphs are files of the python model now): removed.
STALE_MODELS = (ENCODER, DECODER)
GRAPH_FILES = {ENCODER: "encoder", DECODER: "decoder"}  # <name><variant>.onnx in nllb/1/
TINY_SEED = 1234
TINY_EOS_BOOST = 4.0
TINY_LATIN_BOOST = 6.0


# ----------------------------------------------------------------------------- models


def tiny_config(vocab_size: int) -> Any:
    """M2M100 with NLLB's layout and tiny dimensions (d_model 64, 2+2 layers, 4 heads)."""
    import transformers

    hf: Any = transformers  # untyped
    return hf.M2M100Config(
        vocab_size=vocab_size,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=256,
        # Wider than the 0.02 default so that the random model's next-token distribution has
        # clear winners: greedy parity then tests the graphs, not float noise between near-ties.
        init_std=0.25,
        dropout=0.0,
        attention_dropout=0.0,
        scale_embedding=True,
        tokenizer_class="NllbTokenizer",
        attn_implementation="eager",
    )


def build_tiny() -> tuple[Any, Any]:
    """A randomly initialised M2M100 (fixed seed) and a tokenizer built offline."""
    import torch
    import transformers

    from polydub.export.nllb_tokenizer import build_tiny_tokenizer

    hf: Any = transformers  # untyped
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(TINY_SEED)
    model = hf.M2M100ForConditionalGeneration(tiny_config(len(tokenizer)))
    model.generation_config.max_length = 64
    # Random weights almost never pick </s>, so every output would run to max_length. Lean the
    # final layer norm's bias toward the </s> embedding (tied with lm_head): translations then
    # end at varied lengths, and the checks exercise finished beams and early stopping.
    with torch.no_grad():
        eos = model.lm_head.weight[model.config.eos_token_id]
        model.model.decoder.layer_norm.bias += TINY_EOS_BOOST * eos / eos.norm()
        # ... and toward Latin-letter pieces: the tiny voices speak only letters, and noise in
        # Devanagari or Hangul (what the random model favoured) left nothing to synthesize, so
        # a job on tiny models dubbed nothing and failed its quality gate.
        vocab = tokenizer.get_vocab()
        latin = [i for piece, i in vocab.items() if re.fullmatch(r"▁?[a-z]+", piece)]
        direction = model.lm_head.weight[latin].mean(0)
        model.model.decoder.layer_norm.bias += TINY_LATIN_BOOST * direction / direction.norm()
    return model.eval(), tokenizer


def load_checkpoint(checkpoint: Checkpoint) -> tuple[Any, Any]:
    import transformers

    hf: Any = transformers  # untyped
    ref, kwargs = pretrained_args(checkpoint)
    tokenizer = hf.AutoTokenizer.from_pretrained(ref, **kwargs)
    model = hf.M2M100ForConditionalGeneration.from_pretrained(
        ref, attn_implementation="eager", **kwargs
    )
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigurationError(
            f"{checkpoint.describe()}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocabulary {model.config.vocab_size}: they do not belong together",
            code="tokenizer_mismatch",
        )
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- exporter


class NllbExporter:
    name = FAMILY

    choosable = True

    def defaults(self, preset: Preset) -> dict[str, Checkpoint]:
        if preset is Preset.TINY:
            return {BLS: Checkpoint(RANDOM, LICENSE)}
        if preset is Preset.AUTO:
            raise ValueError("resolve the 'auto' preset first (polydub.export.hub.resolve_preset)")
        return {BLS: CHECKPOINTS[preset]}

    def optional(self) -> dict[str, Checkpoint]:
        return {}

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        ckpt = checkpoints[BLS]
        if ckpt.random:
            model, tokenizer = build_tiny()
            notes = [
                "random M2M100 (d_model 64, 2+2 layers, 4 heads) and an offline "
                "tokenizer: the translations are noise"
            ]
        else:
            model, tokenizer = load_checkpoint(ckpt)
            notes = [f"{ckpt.describe()} is licensed {ckpt.license}: non-commercial use only"]
        return self.export_model(
            model, tokenizer, target, repository, ckpt.describe(), notes, release_weights=True
        )

    def export_model(
        self,
        model: Any,
        tokenizer: Any,
        target: Target,
        repository: Path,
        checkpoint: str,
        notes: list[str] | None = None,
        *,
        release_weights: bool = False,
    ) -> ExportReport:
        """Export, check and place a loaded model and its tokenizer. ``release_weights``: the
        model's weights are freed once the graphs are checked (the model is then unusable): at
        NLLB-3.3B they are 13 GB that placing the graphs (int8 quantization) does not need."""
        started = time.monotonic()
        report = ExportReport(FAMILY, checkpoint, models=[BLS], notes=notes or [])
        report.retired.extend(STALE_MODELS)
        config = generation_config(model)
        with tempfile.TemporaryDirectory(prefix="nllb-export-") as tmp:
            work = Path(tmp)
            encoder_fp32, decoder_fp32 = self._export_graphs(model, work)
            release_memory(FAMILY, "decoder written")
            saved = tie_graph(decoder_fp32)
            report.notes.append(
                f"{DECODER}: lm_head reads the shared embedding, stored once: "
                f"{saved / 1e6:.1f} MB less, fp32 decoder {graph_bytes(decoder_fp32) / 1e6:.1f} MB"
            )
            release_memory(FAMILY, "decoder tied")
            self._check(model, tokenizer, config, encoder_fp32, decoder_fp32, report)
            if release_weights:
                free_weights(model)
            release_memory(FAMILY, "graphs checked")
            self._place(
                target, repository, work, encoder_fp32, decoder_fp32, tokenizer, config, report
            )
        report.notes.append(f"exported and checked in {time.monotonic() - started:.1f}s")
        return report

    @staticmethod
    def _export_graphs(model: Any, work: Path) -> tuple[Path, Path]:
        import torch

        encoder, decoder = wrappers(model, TOP_K)
        cfg = model.config
        heads, head_dim = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads
        ids = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 1, 1]], dtype=torch.int64)
        mask = (ids != cfg.pad_token_id).long()
        with torch.inference_mode():
            _, *cross = encoder(ids, mask)
        layers = cfg.decoder_layers
        past = [torch.zeros(2, heads, 3, head_dim) for _ in range(2 * layers)]
        dec_ids = torch.tensor([[11], [12]], dtype=torch.int64)
        with warnings.catch_warnings():
            # The traced Python branches (position-table growth, mask helpers) are constant for
            # every length the search allows (max_length <= max_position_embeddings).
            jit: Any = torch.jit
            warnings.simplefilter("ignore", jit.TracerWarning)
            # One folder per graph: checkpoints over 2 GB export one external file per tensor.
            encoder_path = export_module(
                encoder, (ids, mask), encoder_spec(layers), work / "encoder" / "model.onnx"
            )
            release_memory(FAMILY, "encoder written")
            decoder_path = export_module(
                decoder,
                (dec_ids, mask, *past, *cross),
                decoder_spec(layers),
                work / "decoder" / "model.onnx",
            )
        return encoder_path, decoder_path

    @staticmethod
    def _check(
        model: Any,
        tokenizer: Any,
        config: GenerationConfig,
        encoder: Path,
        decoder: Path,
        report: ExportReport,
    ) -> None:
        """fp32 graphs vs PyTorch, and greedy tokens of the ONNX search vs ``generate``."""
        ids, mask, targets = sample_batch(tokenizer)
        expected = torch_encoder_outputs(model, ids, mask)
        actual = run_onnx(encoder, {"input_ids": ids, "attention_mask": mask})
        report.max_abs_diff[ENCODER] = check_parity(
            ENCODER,
            max_abs_diff(expected, actual),
            *encoder_spec(config.decoder_layers).tolerance("fp32"),
        )

        # Decoder: the cached step-by-step top log-probs vs one uncached transformers forward.
        max_length = 12
        reference = hf_generate(model, ids, mask, targets, max_length)
        prefix_len = min(len(r[0]) for r in reference)
        prefix = np.array([r[0][:prefix_len] for r in reference], dtype=np.int64)
        top_log_probs, top_ids = onnx_step_log_probs(decoder, encoder, ids, mask, prefix, config)
        diff = max_abs_diff(
            [torch_log_probs_at(model, ids, mask, prefix, top_ids)], [top_log_probs]
        )
        tolerance = decoder_spec(config.decoder_layers).tolerance("fp32")
        report.max_abs_diff[DECODER] = check_parity(DECODER, diff, *tolerance)

        found = onnx_search(encoder, decoder, ids, mask, targets, config, max_length)
        same = all(list(h[0].tokens) == r[0] for h, r in zip(found, reference, strict=True))
        report.token_match[DECODER] = same
        if not same:
            raise AssertionError(f"greedy tokens differ: onnx {found} vs transformers {reference}")

    @staticmethod
    def _place(
        target: Target,
        repository: Path,
        work: Path,
        encoder_fp32: Path,
        decoder_fp32: Path,
        tokenizer: Any,
        config: GenerationConfig,
        report: ExportReport,
    ) -> None:
        """Served files: CPU <graph>.onnx = int8 when within tolerance; GPU <graph>_fp16.onnx."""
        ids, mask, targets = sample_batch(tokenizer)
        feeds = {
            ENCODER: {"input_ids": ids, "attention_mask": mask},
            DECODER: sample_decoder_feeds(encoder_fp32, ids, mask, targets, config, past_len=3),
        }
        bls = version_dir(repository, BLS)
        layers = config.decoder_layers
        for spec, fp32 in (
            (encoder_spec(layers), encoder_fp32),
            (decoder_spec(layers), decoder_fp32),
        ):
            stem = GRAPH_FILES[spec.name]
            for stale in bls.glob(f"{stem}*.onnx*"):
                stale.unlink()
            reference = run_onnx(fp32, feeds[spec.name])
            if target is Target.GPU:
                # <graph>.onnx (fp32) keeps the CPU profile usable; gpu.pbtxt names *_fp16.onnx.
                fp16 = convert_fp16(fp32, work / f"{spec.name}_fp16" / "model.onnx")
                diff, rel = float_diff(spec, reference, run_onnx(fp16, feeds[spec.name]))
                report.notes.append(f"{spec.name}: fp16 max |diff| {diff:.3g} ({rel:.2%} of range)")
                check_parity(f"{spec.name} fp16 (relative)", rel, FP16_RTOL)
                copy_graph(fp16, bls / f"{stem}_fp16.onnx")
                copy_graph(fp32, bls / f"{stem}.onnx")
                report.precision[spec.name] = "fp16"
                continue
            int8 = quantize_int8(
                fp32, work / f"{spec.name}_int8" / "model.onnx", token_embeddings=True
            )
            quantized = run_onnx(int8, feeds[spec.name])
            diff, rel = float_diff(spec, reference, quantized)
            report.int8_max_abs_diff[spec.name] = diff
            limit = spec.tolerance("int8")[0]
            served = "int8" if rel <= limit else "fp32"
            top1 = ""
            if spec.name == DECODER:
                agree = float(np.mean(reference[1][:, 0] == quantized[1][:, 0]))
                top1 = f", top-1 token agreement {agree:.0%}"
            report.notes.append(
                f"{spec.name}: dynamic int8 max |diff| {diff:.3g} = {rel:.2%} of the outputs' "
                f"max |value| (limit {limit:.0%}){top1}: serving {served} on CPU"
            )
            if served == "int8":
                copy_graph(int8, bls / f"{stem}.onnx")
                copy_graph(fp32, bls / f"{stem}_fp32.onnx")  # for checks and comparisons
            else:
                # <graph>.onnx is then the fp32 graph itself: no second copy of its bytes.
                copy_graph(fp32, bls / f"{stem}.onnx")
            report.precision[spec.name] = served
            release_memory(FAMILY, f"{spec.name} placed")

        tokenizer_dir = bls / TOKENIZER_DIR
        if tokenizer_dir.exists():
            shutil.rmtree(tokenizer_dir)
        tokenizer.save_pretrained(str(tokenizer_dir))
        config.save(tokenizer_dir)
