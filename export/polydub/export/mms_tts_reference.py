"""MMS-TTS references for the export's checks and the tests: a padded batch as the client builds
it, the synthesizer in PyTorch, and one row through transformers' own ``VitsModel`` with the
synthesizer's noise."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export.mms_tts_graph import INPUT_NAMES
from polydub.serving.tts_tokenizer import TtsTokenizer


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


def vocab_text(spec: TtsTokenizer, length: int, offset: int = 0) -> str:
    """Speakable text in any script: the vocabulary's own letters in words of four."""
    ordered = [c for c, i in sorted(spec.vocab.items(), key=lambda kv: kv[1]) if i and c.strip()]
    letters = [c for c in ordered if c.isalpha()] or ordered
    chars = [letters[(offset + k) % len(letters)] for k in range(length)]
    return " ".join("".join(chars[k : k + 4]) for k in range(0, length, 4))
