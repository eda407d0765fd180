"""NLLB-200 references for the export's checks: PyTorch outputs and transformers' ``generate``
on fixed sentences, and the same computations through the exported graphs (the served beam
search, ``polydub.serving.nllb_search``, run in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polydub.export.onnx_tools import max_abs_diff, run_onnx
from polydub.export.spec import GraphSpec
from polydub.serving.names import layer_tensors
from polydub.serving.nllb_search import (
    GenerationConfig,
    Hypothesis,
    SearchRequest,
    beam_search,
    extend_past,
)
from polydub.serving.nllb_translate import OnnxRuntimeModel, cross_index

PARITY_TEXTS = (
    ("Hello, how are you today?", "eng_Latn", "fra_Latn"),
    ("Das Wetter ist schön und der Film beginnt um acht.", "deu_Latn", "spa_Latn"),
    ("Привет, как дела сегодня?", "rus_Cyrl", "eng_Latn"),
)


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


def _cross(encoder_path: Path, ids: Any, mask: Any, layers: int) -> dict[str, Any]:
    """The encoder graph's cross K/V per layer, as decoder feeds (name -> array)."""
    names = layer_tensors("cross", layers)
    outputs = run_onnx(encoder_path, {"input_ids": ids, "attention_mask": mask}, names)
    return dict(zip(names, outputs, strict=True))


def sample_decoder_feeds(
    encoder_path: Path, ids: Any, mask: Any, targets: list[int], config: Any, past_len: int
) -> dict[str, Any]:
    """Decoder feeds: real cross K/V, a random past of ``past_len`` steps, two new tokens."""
    layers = config.decoder_layers
    rng = np.random.default_rng(0)
    shape = (len(ids), layers, config.decoder_heads, past_len, config.head_dim)
    keys, values = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    past = [kv[:, i] for i in range(layers) for kv in (keys, values)]  # layer_tensors order
    return {
        "input_ids": np.array([[t, 100 + i] for i, t in enumerate(targets)], dtype=np.int64),
        "encoder_attention_mask": mask,
        **dict(zip(layer_tensors("past", layers), past, strict=True)),
        **_cross(encoder_path, ids, mask, layers),
    }


def float_diff(spec: GraphSpec, expected: list[Any], actual: list[Any]) -> tuple[float, float]:
    """(max |diff|, max |diff| / max |expected|) over the float outputs (token ids are not)."""
    floats = [i for i, t in enumerate(spec.outputs) if t.dtype == "float32"]
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
        outputs = [hidden.numpy()]
        for layer in model.model.decoder.layers:  # in layer_tensors order
            for proj in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
                outputs.append(proj(hidden).view(b, s, heads, d // heads).transpose(1, 2).numpy())
    return outputs


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


def onnx_step_log_probs(
    decoder_path: Path, encoder_path: Path, ids: Any, mask: Any, decoder_ids: Any, config: Any
) -> tuple[Any, Any]:
    """(top_log_probs, top_ids) [batch, T - 1, top_k] of every prefix position after the first,
    fed as the search feeds them through the KV cache: the decoder start and the language code
    in one call, then one token per call. One decoder session serves every step: a fresh
    session per step loaded and optimised the 2.8 GB NLLB-600M graph again for every token, and
    the export peaked at 11 GB (issue 17)."""
    import onnxruntime as ort

    layers = config.decoder_layers
    cross = _cross(encoder_path, ids, mask, layers)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(decoder_path), options, providers=["CPUExecutionProvider"])
    shape = (len(ids), config.decoder_heads, 0, config.head_dim)
    past = tuple(np.zeros(shape, np.float32) for _ in range(2 * layers))
    every_row = np.arange(len(ids))  # no beams here: each row continues itself
    values, indices = [], []
    chunks = [
        decoder_ids[:, :2],
        *(decoder_ids[:, i : i + 1] for i in range(2, decoder_ids.shape[1])),
    ]
    for chunk in chunks:
        feeds = {"input_ids": chunk, "encoder_attention_mask": mask, **cross}
        feeds.update(zip(layer_tensors("past", layers), past, strict=True))
        top_log_probs, top_ids, *new = session.run(None, feeds)
        past = extend_past(past, tuple(new), every_row)
        values.append(top_log_probs)
        indices.append(top_ids)
    return np.stack(values, axis=1), np.stack(indices, axis=1)


def torch_log_probs_at(model: Any, ids: Any, mask: Any, decoder_ids: Any, top_ids: Any) -> Any:
    """transformers' log-softmax (one uncached forward) of positions 1.. at the given ids."""
    logits = torch_logits(model, ids, mask, decoder_ids)[:, 1:].astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return np.take_along_axis(log_probs, top_ids, axis=-1)


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
    config: GenerationConfig,
    max_length: int,
    num_beams: int = 1,
) -> list[list[Hypothesis]]:
    """The BLS model's beam search, in-process, on a batch of (already tokenised) sources."""
    model = OnnxRuntimeModel(encoder_path, decoder_path)
    cross = model.encode(ids, mask)

    def step(dec_ids: Any, source_index: Any, past: Any) -> Any:
        if past is None:
            shape = (len(dec_ids), config.decoder_heads, 0, config.head_dim)
            past = tuple(np.zeros(shape, np.float32) for _ in cross)
        index = cross_index(source_index, model.shares_cross)
        return model.decode(dec_ids, mask[index], tuple(c[index] for c in cross), past)

    requests = [SearchRequest(t, num_beams, max_length) for t in targets]
    return beam_search(requests, step, config, select=model.select)
