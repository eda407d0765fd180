"""The two Whisper graphs as small torch modules over a transformers Whisper model's weights.

Why our own wrappers rather than optimum's ``encoder_model`` + ``decoder_model_merged``:

* the cross-attention keys/values of every decoder layer are projected once, inside the
  encoder call, for the whole batch of windows; the decoder never sees the encoder output;
* the decoder graph has a single branch (no ``If`` on ``use_cache_branch``): step 1 simply
  feeds an empty past (length 0), which onnxruntime's CPU and CUDA providers handle (checked
  on an H100 by ``bench/gpu_check.py``);
* the decoder returns the logits of the last position only ([B, vocab]): the prompt step
  feeds two tokens, and shipping [B, S, vocab] back to the BLS loop would be waste.

Tensor names (``i`` = decoder layer):
  encoder  in  input_features [B, n_mels, 3000]
           out last_hidden_state [B, 1500, d_model], cross_key.i / cross_value.i [B, H, 1500, Dh]
  decoder  in  input_ids [B, S] int64, past_key.i / past_value.i [B, H, P, Dh],
               cross_key.i / cross_value.i [B, H, 1500, Dh]
           out logits [B, vocab], present_key.i / present_value.i [B, H, P + S, Dh]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polydub.export.spec import GraphSpec, TensorSpec
from polydub.serving import names
from polydub.serving.names import (
    WhisperDecoderIn,
    WhisperDecoderOut,
    WhisperEncoderIn,
    WhisperEncoderOut,
    layer_tensors,
)

BLS_MODEL = names.WHISPER  # the one served model: the graphs are files in its version folder
ENCODER_MODEL = "whisper_encoder"  # graph names (GraphSpec.name), not served models
DECODER_MODEL = "whisper_decoder"
GRAPH_FILES = {ENCODER_MODEL: "encoder", DECODER_MODEL: "decoder"}  # graph -> file stem
# int8 vs the fp32 graph: the error's RMS over each output's RMS (onnx_tools.rms_rel_diff). On
# real whisper-base, speech: weight-only int8 0.03-0.05, onnxruntime's dynamic int8 up to 0.26.
INT8_RMS_RTOL = 0.1


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, H * Dh] -> [B, H, T, Dh]."""
    b, t, _ = x.shape
    return x.reshape(b, t, heads, -1).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """[B, H, T, Dh] -> [B, T, H * Dh]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class EncoderGraph(nn.Module):
    """Mel features -> encoder output and every decoder layer's cross-attention K/V."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder = model.model.encoder
        self.layers = model.model.decoder.layers
        self.heads = model.config.decoder_attention_heads

    def forward(self, input_features: Tensor) -> tuple[Tensor, ...]:
        hidden = self.encoder(input_features).last_hidden_state
        outputs = [hidden]
        for layer in self.layers:
            attn = layer.encoder_attn
            outputs.append(_heads(attn.k_proj(hidden), self.heads))
            outputs.append(_heads(attn.v_proj(hidden), self.heads))
        return tuple(outputs)


class DecoderGraph(nn.Module):
    """One decoding step with a KV cache; the same maths as WhisperDecoder, laid out flat."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        decoder = model.model.decoder
        self.embed_tokens = decoder.embed_tokens
        self.embed_positions = decoder.embed_positions
        self.layers = decoder.layers
        self.layer_norm = decoder.layer_norm
        self.heads = model.config.decoder_attention_heads
        self.n_layers = len(decoder.layers)

    def forward(self, input_ids: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        n = self.n_layers
        past_k, past_v = states[0 : 2 * n : 2], states[1 : 2 * n : 2]
        cross_k, cross_v = states[2 * n :: 2], states[2 * n + 1 :: 2]

        # Positions past_len .. past_len + S - 1, from shapes so they stay dynamic in the graph.
        ones = torch.ones_like(input_ids[0])
        steps = torch.cumsum(ones, dim=0) - 1  # 0 .. S-1
        # keepdim: CUDA's ReduceSum refuses to drop a dimension of size 0 (the empty past of
        # the first step); a [1] here broadcasts like the scalar would.
        past_len = torch.ones_like(past_k[0][0, 0, :, 0]).sum(0, keepdim=True).to(steps.dtype)
        positions = past_len + steps
        x = self.embed_tokens(input_ids) + self.embed_positions.weight[positions].unsqueeze(0)

        # Causal mask over [past + new] keys for the S new queries (all zeros when S == 1).
        key_pos = (
            torch.cumsum(torch.ones_like(torch.cat([past_k[0][0, 0, :, 0], steps.to(x.dtype)])), 0)
            - 1
        )
        mask = torch.where(
            key_pos[None, :] > positions[:, None].float(),
            torch.tensor(-1e9, dtype=x.dtype),
            torch.tensor(0.0, dtype=x.dtype),
        )

        presents: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            residual = x
            h = layer.self_attn_layer_norm(x)
            attn = layer.self_attn
            q = _heads(attn.q_proj(h) * attn.scaling, self.heads)
            k = torch.cat([past_k[i], _heads(attn.k_proj(h), self.heads)], dim=2)
            v = torch.cat([past_v[i], _heads(attn.v_proj(h), self.heads)], dim=2)
            presents += [k, v]
            weights = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
            x = residual + attn.out_proj(_merge(weights @ v))

            residual = x
            h = layer.encoder_attn_layer_norm(x)
            attn = layer.encoder_attn
            q = _heads(attn.q_proj(h) * attn.scaling, self.heads)
            weights = torch.softmax(q @ cross_k[i].transpose(-1, -2), dim=-1)
            x = residual + attn.out_proj(_merge(weights @ cross_v[i]))

            residual = x
            h = layer.final_layer_norm(x)
            x = residual + layer.fc2(layer.activation_fn(layer.fc1(h)))

        last = self.layer_norm(x[:, -1, :])
        logits = last @ self.embed_tokens.weight.t()  # proj_out is tied to the embeddings
        return (logits, *presents)


def encoder_spec(n_mels: int, d_model: int, layers: int, heads: int) -> GraphSpec:
    dh = d_model // heads
    cross = tuple(
        TensorSpec(name, "float32", ("batch", heads, 1500, dh))
        for name in layer_tensors("cross", layers)
    )
    return GraphSpec(
        name=ENCODER_MODEL,
        inputs=(TensorSpec(WhisperEncoderIn.INPUT_FEATURES, "float32", ("batch", n_mels, 3000)),),
        outputs=(
            TensorSpec(WhisperEncoderOut.LAST_HIDDEN_STATE, "float32", ("batch", 1500, d_model)),
            *cross,
        ),
        # Relative to each output's scale (whisper_reference.check_graphs): real whisper-base's
        # fp32 graph is within 2e-5 of PyTorch on values that reach 24. int8 also has to pass
        # the task-level check on speech (whisper_int8.judge).
        fp32_atol=None,
        fp32_rtol=1e-4,
        int8_atol=None,
        int8_rms_rtol=INT8_RMS_RTOL,
    )


def decoder_spec(d_model: int, layers: int, heads: int, vocab: int) -> GraphSpec:
    dh = d_model // heads

    def kv(kind: str, length: int | str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(name, "float32", ("batch", heads, length, dh))
            for name in layer_tensors(kind, layers)
        )

    return GraphSpec(
        name=DECODER_MODEL,
        inputs=(
            TensorSpec(WhisperDecoderIn.INPUT_IDS, "int64", ("batch", "tokens")),
            *kv("past", "past"),
            *kv("cross", 1500),
        ),
        outputs=(
            TensorSpec(WhisperDecoderOut.LOGITS, "float32", ("batch", vocab)),
            *kv("present", "total"),
        ),
        fp32_atol=None,
        fp32_rtol=1e-4,
        int8_atol=None,
        int8_rms_rtol=INT8_RMS_RTOL,
    )


def graph_path(repository: Path, graph: str, variant: str = "") -> Path:
    """``<repository>/whisper/1/<encoder|decoder><variant>.onnx``; variant "", "_fp32", "_fp16"."""
    return repository / BLS_MODEL / "1" / f"{GRAPH_FILES[graph]}{variant}.onnx"
