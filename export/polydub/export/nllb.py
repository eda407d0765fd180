"""NLLB-200 (M2M100 architecture): encoder and KV-cached decoder graphs, checked against PyTorch.

Two ONNX graphs, each one Triton model, plus the BLS model ``nllb`` that runs the search:

* ``nllb_encoder``: input_ids, attention_mask [batch, src_len] -> last_hidden_state
  [batch, src_len, d_model] and the decoder's cross-attention keys/values, computed once per
  source: cross_key, cross_value [batch, layers, heads, src_len, head_dim].
* ``nllb_decoder``: one decoding step over a self-attention KV cache. input_ids [batch, dec_len],
  encoder_attention_mask [batch, src_len], cross_key/value, past_key/value [batch, layers, heads,
  past_len, head_dim] (past_len may be 0) -> logits [batch, dec_len, vocab], top_log_probs /
  top_ids [batch, top_k] (log-softmax of the last position: all a beam search needs, instead of
  a 256k-wide row per beam), present_key/value [batch, layers, heads, past_len + dec_len, head_dim].

The layer stack is the checkpoint's own modules (layer norms, projections, feed-forward); the
wrappers only route the cache tensors, which keeps the graphs free of transformers' Cache
classes. optimum-onnx's M2M100 export was not used: it gives three decoder graphs (or a merged
one with a scalar ``use_cache_branch`` input that has no batch axis, so Triton cannot batch it)
and one input per layer and per K/V (96 for NLLB-3.3B) on every step.

Model-structure axes (layers, heads, head_dim, d_model, vocab, top_k) are named dynamic too: the
committed Triton configs declare them -1 and fit the tiny and the real checkpoints alike (the
onnxruntime backend rejects a -1 in the config where the graph has a fixed size).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from polydub.errors import ConfigurationError
from polydub.export.hub import pretrained_args
from polydub.export.onnx_tools import (
    check_parity,
    export_module,
    max_abs_diff,
    quantize_int8,
    run_onnx,
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
    TensorSpec,
)

log = logging.getLogger(__name__)

FAMILY = "nllb"
ENCODER = "nllb_encoder"
DECODER = "nllb_decoder"
BLS = "nllb"
TOKENIZER_DIR = "tokenizer"  # under nllb/1/, next to the BLS model (git-ignored)
LICENSE = "CC-BY-NC-4.0"  # the NLLB-200 weights: non-commercial use only
CHECKPOINTS = {
    Preset.SMALL: Checkpoint("facebook/nllb-200-distilled-600M", LICENSE),
    Preset.LARGE: Checkpoint("facebook/nllb-200-3.3B", LICENSE),
}
TOP_K = 16  # candidates per row from the decoder graph: beam sizes up to 8
FP32_ATOL = 1e-3  # logits and hidden states vs PyTorch (real checkpoints have logits ~ +-20)
# int8 (dynamic: int8 weights, per-tensor uint8 activations) and fp16 vs the fp32 graph, as a
# fraction of the output's largest |value|: absolute errors scale with the checkpoint's logits.
INT8_RTOL = 0.1
FP16_RTOL = 0.02
PARITY_TEXTS = (
    ("Hello, how are you today?", "eng_Latn", "fra_Latn"),
    ("Das Wetter ist schön und der Film beginnt um acht.", "deu_Latn", "spa_Latn"),
    ("Привет, как дела сегодня?", "rus_Cyrl", "eng_Latn"),
)
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot hold a graph over 2 GB: weights go beside
TINY_SEED = 1234
TINY_EOS_BOOST = 4.0
TINY_LATIN_BOOST = 6.0

_F32, _I64 = "float32", "int64"
_CACHE = ("batch", "layers", "heads", "src_len", "head_dim")

ENCODER_SPEC = GraphSpec(
    name=ENCODER,
    inputs=(
        TensorSpec("input_ids", _I64, ("batch", "src_len")),
        TensorSpec("attention_mask", _I64, ("batch", "src_len")),
    ),
    outputs=(
        TensorSpec("last_hidden_state", _F32, ("batch", "src_len", "d_model")),
        TensorSpec("cross_key", _F32, _CACHE),
        TensorSpec("cross_value", _F32, _CACHE),
    ),
    fp32_atol=FP32_ATOL,
    int8_atol=None,
    int8_rtol=INT8_RTOL,
)
DECODER_SPEC = GraphSpec(
    name=DECODER,
    inputs=(
        TensorSpec("input_ids", _I64, ("batch", "dec_len")),
        TensorSpec("encoder_attention_mask", _I64, ("batch", "src_len")),
        TensorSpec("cross_key", _F32, _CACHE),
        TensorSpec("cross_value", _F32, _CACHE),
        TensorSpec("past_key", _F32, ("batch", "layers", "heads", "past_len", "head_dim")),
        TensorSpec("past_value", _F32, ("batch", "layers", "heads", "past_len", "head_dim")),
    ),
    outputs=(
        TensorSpec("logits", _F32, ("batch", "dec_len", "vocab")),
        TensorSpec("top_log_probs", _F32, ("batch", "top_k")),
        TensorSpec("top_ids", _I64, ("batch", "top_k")),
        TensorSpec("present_key", _F32, ("batch", "layers", "heads", "total_len", "head_dim")),
        TensorSpec("present_value", _F32, ("batch", "layers", "heads", "total_len", "head_dim")),
    ),
    fp32_atol=FP32_ATOL,
    int8_atol=None,
    int8_rtol=INT8_RTOL,
)


def load_search() -> ModuleType:
    """The BLS model's search module (model_repository/nllb/1/nllb_search.py), imported once.

    It lives beside the BLS model because Triton's python backend needs it there, and it imports
    nothing from polydub so it runs in the official Triton container unchanged.
    """
    name = "nllb_search"
    if name in sys.modules:
        return sys.modules[name]
    path = SOURCE_REPOSITORY / BLS / "1" / "nllb_search.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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


def _wrappers(model: Any, top_k: int) -> tuple[Any, Any]:
    import torch
    from torch import nn

    decoder = model.model.decoder
    heads = model.config.decoder_attention_heads
    head_dim = model.config.d_model // heads
    neg = torch.finfo(torch.float32).min

    def split(x: Any) -> Any:  # [B, T, D] -> [B, H, T, Dh]
        return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def attend(attn: Any, x: Any, key: Any, value: Any, visible: Any) -> Any:
        # As transformers' eager attention: (q k^T) * scaling, masked, softmax, @ v.
        scores = torch.matmul(split(attn.q_proj(x)), key.transpose(2, 3)) * attn.scaling
        weights = torch.softmax(scores.masked_fill(~visible, neg), dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2)
        return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.model.encoder
            self.layers = decoder.layers

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            keys = [split(layer.encoder_attn.k_proj(hidden)) for layer in self.layers]
            values = [split(layer.encoder_attn.v_proj(hidden)) for layer in self.layers]
            return hidden, torch.stack(keys, 1), torch.stack(values, 1)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.lm_head = model.lm_head

        def forward(
            self,
            input_ids: Any,
            encoder_attention_mask: Any,
            cross_key: Any,
            cross_value: Any,
            past_key: Any,
            past_value: Any,
        ) -> Any:
            past_len = past_key.shape[3]
            new_len = input_ids.shape[1]
            embeds = self.decoder.embed_tokens(input_ids)  # scaled by sqrt(d_model) inside
            hidden = embeds + self.decoder.embed_positions(input_ids, embeds, past_len)
            query_pos = torch.arange(new_len, device=input_ids.device) + past_len
            key_pos = torch.arange(past_len + new_len, device=input_ids.device)
            causal = (key_pos[None, :] <= query_pos[:, None])[None, None]  # [1, 1, T, P+T]
            cross_visible = encoder_attention_mask[:, None, None, :].bool()  # [B, 1, 1, S]
            keys, values = [], []
            for i, layer in enumerate(self.decoder.layers):
                x = layer.self_attn_layer_norm(hidden)
                key = torch.cat([past_key[:, i], split(layer.self_attn.k_proj(x))], dim=2)
                value = torch.cat([past_value[:, i], split(layer.self_attn.v_proj(x))], dim=2)
                keys.append(key)
                values.append(value)
                hidden = hidden + attend(layer.self_attn, x, key, value, causal)
                x = layer.encoder_attn_layer_norm(hidden)
                hidden = hidden + attend(
                    layer.encoder_attn, x, cross_key[:, i], cross_value[:, i], cross_visible
                )
                x = layer.final_layer_norm(hidden)
                hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
            logits = self.lm_head(self.decoder.layer_norm(hidden))
            log_probs = torch.log_softmax(logits[:, -1, :], dim=-1)
            top_log_probs, top_ids = torch.topk(log_probs, top_k, dim=-1)
            return logits, top_log_probs, top_ids, torch.stack(keys, 1), torch.stack(values, 1)

    return Encoder().eval(), Decoder().eval()


def generation_config(model: Any, top_k: int = TOP_K) -> Any:
    config = model.config
    generation = model.generation_config
    return load_search().GenerationConfig(
        decoder_start_token_id=int(config.decoder_start_token_id),
        eos_token_id=int(config.eos_token_id),
        pad_token_id=int(config.pad_token_id),
        decoder_layers=int(config.decoder_layers),
        decoder_heads=int(config.decoder_attention_heads),
        head_dim=int(config.d_model // config.decoder_attention_heads),
        top_k=top_k,
        max_position_embeddings=int(config.max_position_embeddings),
        length_penalty=float(generation.length_penalty),
        forced_eos_token_id=(
            int(generation.forced_eos_token_id)
            if generation.forced_eos_token_id is not None
            else None
        ),
    )


# ----------------------------------------------------------------------------- checks


def sample_batch(tokenizer: Any) -> tuple[Any, Any, list[int]]:
    """The parity sentences as one padded batch, and their target-language ids."""
    rows = []
    for text, src, _ in PARITY_TEXTS:
        tokenizer.src_lang = src
        rows.append(tokenizer(text).input_ids)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    targets = [int(tokenizer.convert_tokens_to_ids(tgt)) for _, _, tgt in PARITY_TEXTS]
    return ids, mask, targets


def sample_decoder_feeds(
    encoder_path: Path, ids: Any, mask: Any, targets: list[int], config: Any, past_len: int
) -> dict[str, Any]:
    """Decoder feeds: real cross K/V, a random past of ``past_len`` steps, two new tokens."""
    cross_key, cross_value = run_onnx(
        encoder_path, {"input_ids": ids, "attention_mask": mask}, ["cross_key", "cross_value"]
    )
    rng = np.random.default_rng(0)
    shape = (len(ids), config.decoder_layers, config.decoder_heads, past_len, config.head_dim)
    return {
        "input_ids": np.array([[t, 100 + i] for i, t in enumerate(targets)], dtype=np.int64),
        "encoder_attention_mask": mask,
        "cross_key": cross_key,
        "cross_value": cross_value,
        "past_key": rng.standard_normal(shape).astype(np.float32),
        "past_value": rng.standard_normal(shape).astype(np.float32),
    }


def _graph_bytes(path: Path) -> int:
    """The graph file and its external data (each graph has its own folder while exporting)."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())


def _save(model: Any, dst: Path, large: bool) -> Path:
    """Save a graph; over protobuf's 2 GB limit its weights go to one ``<name>.data`` file."""
    import onnx

    for old in (dst, dst.with_name(dst.name + ".data")):
        old.unlink(missing_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(
        model,
        str(dst),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=dst.name + ".data",
    )
    return dst


def copy_graph(src: Path, dst: Path) -> Path:
    import onnx

    large = _graph_bytes(src) > EXTERNAL_DATA_BYTES
    return _save(onnx.load(str(src)), dst, large)


def quantize_graph(src: Path, dst: Path) -> Path:
    """polydub.export.onnx_tools.quantize_int8, with external data for the large checkpoints."""
    return quantize_int8(src, dst, external_data=_graph_bytes(src) > EXTERNAL_DATA_BYTES)


def tie_graph(path: Path) -> int:
    """Store the decoder's shared embedding once: the output projection (lm_head, tied to the
    token embeddings) reads the embedding itself instead of the transposed copy that constant
    folding writes (``onnx_tools.tie_transposed_weights``; 1 GB of NLLB-600M's fp32 decoder).
    Rewrites the graph (its folder holds nothing else); returns the bytes saved."""
    import onnx

    model = onnx.load(str(path))
    saved = tie_transposed_weights(model)
    if saved:
        large = _graph_bytes(path) - saved > EXTERNAL_DATA_BYTES
        for piece in path.parent.iterdir():  # torch's per-tensor external files, if any
            if piece != path and piece.is_file():
                piece.unlink()
        _save(model, path, large)
    return saved


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 graph with fp32 inputs/outputs, via onnxruntime's converter.

    onnxconverter-common's converter (polydub.export.onnx_tools.convert_fp16) leaves the graph's
    own Cast-to-float nodes typed float32 behind float16 consumers and onnxruntime refuses the
    result ("Type (tensor(float16)) of output arg ... does not match expected type").
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    return _save(model, dst, large=_graph_bytes(src) > 2 * EXTERNAL_DATA_BYTES)


def float_diff(spec: GraphSpec, expected: list[Any], actual: list[Any]) -> tuple[float, float]:
    """(max |diff|, max |diff| / max |expected|) over the float outputs (token ids are not)."""
    floats = [i for i, t in enumerate(spec.outputs) if t.dtype == _F32]
    diff = max_abs_diff([expected[i] for i in floats], [actual[i] for i in floats])
    scale = max(float(np.max(np.abs(expected[i]))) for i in floats)
    return diff, diff / scale if scale else diff


def torch_encoder_outputs(model: Any, ids: Any, mask: Any) -> list[Any]:
    """Reference: the transformers encoder and each decoder layer's own cross-attention K/V."""
    import torch

    with torch.inference_mode():
        hidden = model.model.encoder(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state
        b, s, d = hidden.shape
        heads = model.config.decoder_attention_heads
        kv = [
            torch.stack(
                [
                    getattr(layer.encoder_attn, proj)(hidden)
                    .view(b, s, heads, d // heads)
                    .transpose(1, 2)
                    for layer in model.model.decoder.layers
                ],
                1,
            )
            for proj in ("k_proj", "v_proj")
        ]
    return [hidden.numpy(), kv[0].numpy(), kv[1].numpy()]


def torch_logits(model: Any, ids: Any, mask: Any, decoder_ids: Any) -> Any:
    """Reference: transformers' full forward (no cache) over the whole decoder prefix."""
    import torch

    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.from_numpy(decoder_ids),
            use_cache=False,
        )
    return out.logits.numpy()


def onnx_step_logits(
    decoder_path: Path, encoder_path: Path, ids: Any, mask: Any, decoder_ids: Any, config: Any
) -> Any:
    """Logits for every prefix position, fed token by token through the KV cache."""
    cross_key, cross_value = run_onnx(
        encoder_path, {"input_ids": ids, "attention_mask": mask}, ["cross_key", "cross_value"]
    )
    shape = (len(ids), config.decoder_layers, config.decoder_heads, 0, config.head_dim)
    past = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    logits = []
    # Two tokens on the first call (as the search does), then one per call.
    chunks = [
        decoder_ids[:, :2],
        *(decoder_ids[:, i : i + 1] for i in range(2, decoder_ids.shape[1])),
    ]
    for chunk in chunks:
        out, _, _, key, value = run_onnx(
            decoder_path,
            {
                "input_ids": chunk,
                "encoder_attention_mask": mask,
                "cross_key": cross_key,
                "cross_value": cross_value,
                "past_key": past[0],
                "past_value": past[1],
            },
        )
        logits.append(out)
        past = (key, value)
    return np.concatenate(logits, axis=1)


def hf_generate(
    model: Any,
    ids: Any,
    mask: Any,
    targets: list[int],
    max_length: int,
    num_beams: int = 1,
    num_return: int = 1,
) -> list[list[list[int]]]:
    """transformers ``generate`` per source (no padding across sources): the reference tokens."""
    import torch

    results = []
    with torch.inference_mode():
        for row, target in enumerate(targets):
            n = int(mask[row].sum())
            out = model.generate(
                input_ids=torch.from_numpy(ids[row : row + 1, :n]),
                attention_mask=torch.from_numpy(mask[row : row + 1, :n]),
                forced_bos_token_id=target,
                num_beams=num_beams,
                num_return_sequences=num_return,
                do_sample=False,
                max_length=max_length,
                early_stopping=False,
            )
            results.append([_strip(seq.tolist(), model.config.pad_token_id) for seq in out])
    return results


def _strip(tokens: list[int], pad: int) -> list[int]:
    while len(tokens) > 2 and tokens[-1] == pad:
        tokens.pop()
    return tokens


def onnx_search(
    encoder_path: Path,
    decoder_path: Path,
    ids: Any,
    mask: Any,
    targets: list[int],
    config: Any,
    max_length: int,
    num_beams: int = 1,
) -> list[list[Any]]:
    """The BLS model's beam search, in-process, on a batch of (already tokenised) sources."""
    search = load_search()
    model = search.OnnxRuntimeModel(encoder_path, decoder_path)
    cross_key, cross_value = model.encode(ids, mask)

    def step(dec_ids: Any, source_index: Any, past: Any) -> Any:
        if past is None:
            shape = (len(dec_ids), config.decoder_layers, config.decoder_heads, 0, config.head_dim)
            past = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
        top_log_probs, top_ids, key, value = model.decode(
            {
                "input_ids": dec_ids,
                "encoder_attention_mask": mask[source_index],
                "cross_key": cross_key[source_index],
                "cross_value": cross_value[source_index],
                "past_key": past[0],
                "past_value": past[1],
            }
        )
        return top_log_probs, top_ids, (key, value)

    requests = [search.SearchRequest(t, num_beams, max_length) for t in targets]
    result: list[list[Any]] = search.beam_search(requests, step, config)
    return result


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
        return self.export_model(model, tokenizer, target, repository, ckpt.describe(), notes)

    def export_model(
        self,
        model: Any,
        tokenizer: Any,
        target: Target,
        repository: Path,
        checkpoint: str,
        notes: list[str] | None = None,
    ) -> ExportReport:
        """Export, check and place a loaded model and its tokenizer."""
        started = time.monotonic()
        report = ExportReport(FAMILY, checkpoint, models=[ENCODER, DECODER, BLS], notes=notes or [])
        config = generation_config(model)
        with tempfile.TemporaryDirectory(prefix="nllb-export-") as tmp:
            work = Path(tmp)
            encoder_fp32, decoder_fp32 = self._export_graphs(model, work)
            saved = tie_graph(decoder_fp32)
            report.notes.append(
                f"{DECODER}: lm_head reads the shared embedding, stored once: "
                f"{saved / 1e6:.1f} MB less, fp32 decoder {_graph_bytes(decoder_fp32) / 1e6:.1f} MB"
            )
            self._check(model, tokenizer, config, encoder_fp32, decoder_fp32, report)
            self._place(
                target, repository, work, encoder_fp32, decoder_fp32, tokenizer, config, report
            )
        copy_committed(repository, [ENCODER, DECODER, BLS])
        report.notes.append(f"exported and checked in {time.monotonic() - started:.1f}s")
        return report

    @staticmethod
    def _export_graphs(model: Any, work: Path) -> tuple[Path, Path]:
        import torch

        encoder, decoder = _wrappers(model, TOP_K)
        cfg = model.config
        heads, head_dim = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads
        ids = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 1, 1]], dtype=torch.int64)
        mask = (ids != cfg.pad_token_id).long()
        with torch.inference_mode():
            _, cross_key, cross_value = encoder(ids, mask)
        past = torch.zeros(2, cfg.decoder_layers, heads, 3, head_dim)
        dec_ids = torch.tensor([[11], [12]], dtype=torch.int64)
        with warnings.catch_warnings():
            # The traced Python branches (position-table growth, mask helpers) are constant for
            # every length the search allows (max_length <= max_position_embeddings).
            jit: Any = torch.jit
            warnings.simplefilter("ignore", jit.TracerWarning)
            # One folder per graph: checkpoints over 2 GB export one external file per tensor.
            encoder_path = export_module(
                encoder, (ids, mask), ENCODER_SPEC, work / "encoder" / "model.onnx"
            )
            decoder_path = export_module(
                decoder,
                (dec_ids, mask, cross_key, cross_value, past, past.clone()),
                DECODER_SPEC,
                work / "decoder" / "model.onnx",
            )
        return encoder_path, decoder_path

    @staticmethod
    def _check(
        model: Any, tokenizer: Any, config: Any, encoder: Path, decoder: Path, report: ExportReport
    ) -> None:
        """fp32 graphs vs PyTorch, and greedy tokens of the ONNX search vs ``generate``."""
        ids, mask, targets = sample_batch(tokenizer)
        expected = torch_encoder_outputs(model, ids, mask)
        actual = run_onnx(encoder, {"input_ids": ids, "attention_mask": mask})
        report.max_abs_diff[ENCODER] = check_parity(
            ENCODER, max_abs_diff(expected, actual), *ENCODER_SPEC.tolerance("fp32")
        )

        # Decoder: the cached step-by-step logits vs one uncached transformers forward.
        max_length = 12
        reference = hf_generate(model, ids, mask, targets, max_length)
        prefix_len = min(len(r[0]) for r in reference)
        prefix = np.array([r[0][:prefix_len] for r in reference], dtype=np.int64)
        diff = max_abs_diff(
            [torch_logits(model, ids, mask, prefix)],
            [onnx_step_logits(decoder, encoder, ids, mask, prefix, config)],
        )
        report.max_abs_diff[DECODER] = check_parity(DECODER, diff, *DECODER_SPEC.tolerance("fp32"))

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
        config: Any,
        report: ExportReport,
    ) -> None:
        """Served files: CPU model.onnx = int8 when within tolerance; GPU model_fp16.onnx."""
        ids, mask, targets = sample_batch(tokenizer)
        feeds = {
            ENCODER: {"input_ids": ids, "attention_mask": mask},
            DECODER: sample_decoder_feeds(encoder_fp32, ids, mask, targets, config, past_len=3),
        }
        for spec, fp32 in ((ENCODER_SPEC, encoder_fp32), (DECODER_SPEC, decoder_fp32)):
            out = version_dir(repository, spec.name)
            for stale in out.glob("model*.onnx*"):
                stale.unlink()
            reference = run_onnx(fp32, feeds[spec.name])
            if target is Target.GPU:
                # model.onnx (fp32) keeps the CPU profile usable; gpu.pbtxt names model_fp16.onnx.
                fp16 = convert_fp16(fp32, work / f"{spec.name}_fp16" / "model.onnx")
                diff, rel = float_diff(spec, reference, run_onnx(fp16, feeds[spec.name]))
                report.notes.append(f"{spec.name}: fp16 max |diff| {diff:.3g} ({rel:.2%} of range)")
                check_parity(f"{spec.name} fp16 (relative)", rel, FP16_RTOL)
                copy_graph(fp16, out / "model_fp16.onnx")
                copy_graph(fp32, out / "model.onnx")
                report.precision[spec.name] = "fp16"
                continue
            int8 = quantize_graph(fp32, work / f"{spec.name}_int8" / "model.onnx")
            quantized = run_onnx(int8, feeds[spec.name])
            diff, rel = float_diff(spec, reference, quantized)
            report.int8_max_abs_diff[spec.name] = diff
            limit = spec.tolerance("int8")[0]
            served = "int8" if rel <= limit else "fp32"
            top1 = ""
            if spec is DECODER_SPEC:
                agree = float(np.mean(reference[2][:, 0] == quantized[2][:, 0]))
                top1 = f", top-1 token agreement {agree:.0%}"
            report.notes.append(
                f"{spec.name}: dynamic int8 max |diff| {diff:.3g} = {rel:.2%} of the outputs' "
                f"max |value| (limit {limit:.0%}){top1}: serving {served} on CPU"
            )
            if served == "int8":
                copy_graph(int8, out / "model.onnx")
                copy_graph(fp32, out / "model_fp32.onnx")  # for checks and comparisons
            else:
                # model.onnx is then the fp32 graph itself: no second copy of its bytes.
                copy_graph(fp32, out / "model.onnx")
            report.precision[spec.name] = served

        bls = version_dir(repository, BLS)
        tokenizer_dir = bls / TOKENIZER_DIR
        if tokenizer_dir.exists():
            shutil.rmtree(tokenizer_dir)
        tokenizer.save_pretrained(str(tokenizer_dir))
        config.save(tokenizer_dir)
