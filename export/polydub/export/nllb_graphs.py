"""NLLB-200 (M2M100 architecture): the two ONNX graphs that the python model ``nllb``
(``polydub.serving.nllb_service``) runs its beam search over, in onnxruntime sessions of its own
(files ``nllb/1/encoder.onnx`` and ``decoder.onnx``; the names below are the graphs' names).

* ``nllb_encoder``: input_ids, attention_mask [batch, src_len] -> last_hidden_state
  [batch, src_len, d_model] and the decoder's cross-attention keys/values, computed once per
  source: ``cross_key.i`` / ``cross_value.i`` [batch, heads, src_len, head_dim] per layer.
* ``nllb_decoder``: one decoding step over a self-attention KV cache. input_ids [batch, dec_len],
  ``past_*.i`` [batch, heads, past_len, head_dim] (past_len may be 0), encoder_attention_mask
  [sources, src_len] and ``cross_*.i`` [sources, heads, src_len, head_dim] per layer ->
  top_log_probs / top_ids [batch, top_k] (log-softmax of the last position: all a beam search
  needs, instead of a 256k-wide row per beam) and ``new_*.i`` [batch, heads, dec_len,
  head_dim]: this step's keys/values only.

A source's beams share its cross-attention K/V: the rows are ``sources`` runs of equal length,
one run per source (each request's beams, as the search lays them out), and a source's queries
attend its keys as one matrix. Fed one K/V row per beam, every step read each source's K/V once
per beam (4x at beam 4) in 1-row matmuls, and the search held that many copies: at NLLB-600M's
shape, 8 sentences x 4 beams on one thread, the cross q.k matmuls took 5.9 ms of a ~130 ms step,
1.9 ms shared, and the whole search ran 1.15x faster (issue 17). Rows that are not such runs (a
batch mixing beam counts) are fed one source per row: sources = batch is the same graph.

Self-attention reads the past and this step's keys/values as two parts (two score matmuls, one
softmax over both, two weighted sums) and the graph gives back only the new part. A graph that
appended the new K/V to the past gave back the whole cache, a Concat that copied it every step
(14% of the decoder's kernel time at NLLB-600M's shape, 16 sentences x 4 beams: issue 17's
profile), and the beam reorder then copied it again. The runner now builds the next past in
one pass: each beam's parent row of the past followed by its new K/V
(``polydub.serving.nllb_ort.OrtNllb.select``).

One K/V tensor per layer (``names.layer_tensors``, as Whisper's graphs): with one
[batch, layers, ...] tensor per kind, every step copied the whole cache once to stack the
layers' presents and once to slice each layer out of the past and the cross K/V (16% of the
decoder's kernel time at NLLB-600M's shape, issue 17's profile).

The layer stack is the checkpoint's own modules (layer norms, projections, feed-forward); the
wrappers only route the cache tensors, which keeps the graphs free of transformers' Cache
classes. optimum-onnx's M2M100 export was not used: it gives three decoder graphs (or a merged
one with a scalar ``use_cache_branch`` input that has no batch axis, so Triton cannot batch it).

Model-structure axes (heads, head_dim, d_model, vocab, top_k) are named dynamic; the layer
count is in the tensor names, read back from the graph by whoever runs it.
"""

from __future__ import annotations

from typing import Any

from polydub.export.spec import GraphSpec, TensorSpec
from polydub.serving import names
from polydub.serving.names import (
    NllbDecoderIn,
    NllbDecoderOut,
    NllbEncoderIn,
    NllbEncoderOut,
    layer_tensors,
)
from polydub.serving.nllb_search import GenerationConfig

ENCODER = names.NLLB_ENCODER
DECODER = names.NLLB_DECODER
BLS = names.NLLB
TOP_K = 16  # candidates per row from the decoder graph: beam sizes up to 8
FP32_ATOL = 1e-3  # logits and hidden states vs PyTorch (real checkpoints have logits ~ +-20)
# int8 (dynamic: int8 weights, per-tensor uint8 activations) and fp16 vs the fp32 graph, as a
# fraction of the output's largest |value|: absolute errors scale with the checkpoint's logits.
INT8_RTOL = 0.1
FP16_RTOL = 0.02

_F32, _I64 = "float32", "int64"
# The decoder's cross K/V axis: one per source, shared by its beams (``OrtNllb`` reads the name
# back to know whether a graph shares them: earlier exports had one per row, named "batch").
SOURCES = names.NLLB_CROSS_SOURCES


def _kv(kind: str, layers: int, length: str, batch: str = "batch") -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name, _F32, (batch, "heads", length, "head_dim"))
        for name in layer_tensors(kind, layers)
    )


def encoder_spec(layers: int) -> GraphSpec:
    return GraphSpec(
        name=ENCODER,
        inputs=(
            TensorSpec(NllbEncoderIn.INPUT_IDS, _I64, ("batch", "src_len")),
            TensorSpec(NllbEncoderIn.ATTENTION_MASK, _I64, ("batch", "src_len")),
        ),
        outputs=(
            TensorSpec(NllbEncoderOut.LAST_HIDDEN_STATE, _F32, ("batch", "src_len", "d_model")),
            *_kv("cross", layers, "src_len"),
        ),
        fp32_atol=FP32_ATOL,
        int8_atol=None,
        int8_rtol=INT8_RTOL,
    )


def decoder_spec(layers: int) -> GraphSpec:
    return GraphSpec(
        name=DECODER,
        inputs=(
            TensorSpec(NllbDecoderIn.INPUT_IDS, _I64, ("batch", "dec_len")),
            TensorSpec(NllbDecoderIn.ENCODER_ATTENTION_MASK, _I64, (SOURCES, "src_len")),
            *_kv("past", layers, "past_len"),
            *_kv("cross", layers, "src_len", SOURCES),
        ),
        outputs=(
            TensorSpec(NllbDecoderOut.TOP_LOG_PROBS, _F32, ("batch", "top_k")),
            TensorSpec(NllbDecoderOut.TOP_IDS, _I64, ("batch", "top_k")),
            *_kv("new", layers, "dec_len"),
        ),
        fp32_atol=FP32_ATOL,
        int8_atol=None,
        int8_rtol=INT8_RTOL,
    )


def wrappers(model: Any, top_k: int = TOP_K) -> tuple[Any, Any]:
    """The encoder and the decoder graph as torch modules over the model's own layers."""
    import torch
    from torch import nn

    decoder = model.model.decoder
    heads = model.config.decoder_attention_heads
    head_dim = model.config.d_model // heads
    neg = torch.finfo(torch.float32).min

    def split(x: Any) -> Any:  # [B, T, D] -> [B, H, T, Dh]
        return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def merge(attn: Any, out: Any) -> Any:  # [B, H, T, Dh] -> out_proj([B, T, D])
        out = out.transpose(1, 2)
        return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))

    def attend_sources(attn: Any, x: Any, key: Any, value: Any, visible: Any) -> Any:
        # As transformers' eager attention ((q k^T) * scaling, masked, softmax, @ v), with a
        # source's beams as one query matrix: x [sources * beams, T, D], its rows in runs of
        # ``beams`` per source; key/value [sources, H, S, Dh].
        sources, length = key.shape[0], x.shape[1]
        query = split(attn.q_proj(x)).reshape(sources, -1, heads, length, head_dim)
        query = query.transpose(1, 2).reshape(sources, heads, -1, head_dim)  # [S, H, k*T, Dh]
        scores = torch.matmul(query, key.transpose(2, 3)) * attn.scaling
        weights = torch.softmax(scores.masked_fill(~visible, neg), dim=-1)
        out = torch.matmul(weights, value).reshape(sources, heads, -1, length, head_dim)
        return merge(attn, out.transpose(1, 2).reshape(x.shape[0], heads, length, head_dim))

    def attend_cached(
        attn: Any, x: Any, past: tuple[Any, Any], new: tuple[Any, Any], causal: Any
    ) -> Any:
        # The same over the keys past + new without joining them: every past position is
        # visible to every new query, the new ones as ``causal`` [1, 1, T, T] says.
        query = split(attn.q_proj(x))
        (past_key, past_value), (new_key, new_value) = past, new
        to_past = torch.matmul(query, past_key.transpose(2, 3)) * attn.scaling
        to_new = torch.matmul(query, new_key.transpose(2, 3)) * attn.scaling
        scores = torch.cat([to_past, to_new.masked_fill(~causal, neg)], dim=-1)
        weights = torch.split(torch.softmax(scores, dim=-1), [past_key.shape[2], x.shape[1]], -1)
        out = torch.matmul(weights[0], past_value) + torch.matmul(weights[1], new_value)
        return merge(attn, out)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.model.encoder
            self.layers = decoder.layers

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            outputs = [hidden]
            for layer in self.layers:  # in layer_tensors order: key.0, value.0, key.1, ...
                outputs.append(split(layer.encoder_attn.k_proj(hidden)))
                outputs.append(split(layer.encoder_attn.v_proj(hidden)))
            return tuple(outputs)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = decoder
            self.lm_head = model.lm_head

        def forward(self, input_ids: Any, encoder_attention_mask: Any, *states: Any) -> Any:
            n = len(self.decoder.layers)  # states: past K/V per layer, then cross K/V
            past_key, past_value = states[0 : 2 * n : 2], states[1 : 2 * n : 2]
            cross_key, cross_value = states[2 * n :: 2], states[2 * n + 1 :: 2]
            past_len = past_key[0].shape[2]
            embeds = self.decoder.embed_tokens(input_ids)  # scaled by sqrt(d_model) inside
            hidden = embeds + self.decoder.embed_positions(input_ids, embeds, past_len)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            causal = (positions[None, :] <= positions[:, None])[None, None]  # [1, 1, T, T]
            cross_visible = encoder_attention_mask[:, None, None, :].bool()  # [sources, 1, 1, S]
            news = []
            for i, layer in enumerate(self.decoder.layers):
                x = layer.self_attn_layer_norm(hidden)
                key, value = split(layer.self_attn.k_proj(x)), split(layer.self_attn.v_proj(x))
                news += [key, value]
                hidden = hidden + attend_cached(
                    layer.self_attn, x, (past_key[i], past_value[i]), (key, value), causal
                )
                x = layer.encoder_attn_layer_norm(hidden)
                hidden = hidden + attend_sources(
                    layer.encoder_attn, x, cross_key[i], cross_value[i], cross_visible
                )
                x = layer.final_layer_norm(hidden)
                hidden = hidden + layer.fc2(layer.activation_fn(layer.fc1(x)))
            # The last position only, and no logits output: a [rows, 256k] graph output cannot
            # share the projection's buffer, so serving it cost a copy of it (and a gather of
            # the last position) every step, ~13% of a step at 64 rows (issue 17's profile).
            logits = self.lm_head(self.decoder.layer_norm(hidden[:, -1, :]))
            log_probs = torch.log_softmax(logits, dim=-1)
            top_log_probs, top_ids = torch.topk(log_probs, top_k, dim=-1)
            return (top_log_probs, top_ids, *news)

    return Encoder().eval(), Decoder().eval()


def generation_config(model: Any, top_k: int = TOP_K) -> GenerationConfig:
    """What the search needs of the checkpoint (saved beside the tokenizer, read by the BLS)."""
    config = model.config
    generation = model.generation_config
    return GenerationConfig(
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
