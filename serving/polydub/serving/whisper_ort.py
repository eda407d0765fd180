"""Whisper's two exported graphs in onnxruntime sessions of this process: the ``DecoderBackend``
that the ``whisper`` Triton model and the exporter's checks run (``whisper_decode``).

The graphs (``polydub.export.whisper_graphs``):

* encoder: ``input_features`` [B, n_mels, 3000] -> ``cross_key.{i}`` / ``cross_value.{i}``
  [B, heads, 1500, head_dim] for every decoder layer i (plus ``last_hidden_state``), so the
  cross-attention projections run once per window, batched;
* decoder: ``input_ids`` [B, S], ``past_key.{i}`` / ``past_value.{i}`` [B, heads, P, head_dim]
  (P = 0 on the first step), the cross tensors -> ``logits`` [B, vocab] (last position) and
  ``present_key.{i}`` / ``present_value.{i}`` [B, heads, P + S, head_dim].

onnxruntime is imported when the sessions open: it is the Triton image's (onnxruntime-gpu) or
the export's, not a dependency of polydub-serving.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polydub.serving.names import (
    WhisperDecoderIn,
    WhisperDecoderOut,
    WhisperEncoderIn,
    layer_tensors,
)
from polydub.serving.whisper_features import Array
from polydub.serving.whisper_text import WhisperFacts

# onnxruntime execution providers by the short names the model's config uses
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OrtGraphs:
    """The encoder and the decoder graph in onnxruntime sessions of this process.

    States are OrtValues bound with io_binding on the decoder's device: the cross-attention K/V
    of a batch are written once by the encoder and stay there for every step, each step's
    present K/V are the next step's past as they are, and only the logits [b, vocab] come back
    to numpy. A step costs the decoder's compute and nothing else. (Served as separate Triton
    models, the cross K/V of a batch of 16 windows, 590 MB at whisper-base sizes, crossed the
    python backend's shared memory twice per step: the decode ran 2.4-3x slower.)

    ``providers``: short names in order of preference (``cpu``, ``cuda``, ``tensorrt``); those
    this onnxruntime build lacks are skipped, the CPU provider is always last.
    ``threads``: intra-op threads per session; 0: one per CPU this process may run on, set
    explicitly because onnxruntime's own default pins its threads to cores, and on a shared or
    busy host a pinned thread cannot move off a loaded core (every parallel step then waits
    for it: served decodes ran up to 2x slower than the unpinned in-process ones under load).
    """

    def __init__(
        self,
        encoder: str | Path,
        decoder: str | Path,
        facts: WhisperFacts,
        *,
        threads: int = 0,
        encoder_providers: Sequence[str] = ("cpu",),
        decoder_providers: Sequence[str] = ("cpu",),
        device_id: int = 0,
        trt_cache_dir: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.facts = facts
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        self.encoder = ort.InferenceSession(
            str(encoder),
            options,
            providers=self._providers(encoder_providers, device_id, trt_cache_dir),
        )
        self.decoder = ort.InferenceSession(
            str(decoder),
            options,
            providers=self._providers(decoder_providers, device_id, trt_cache_dir),
        )
        on_gpu = "CUDAExecutionProvider" in self.decoder.get_providers()
        self.device = "cuda" if on_gpu else "cpu"
        self.device_id = device_id if on_gpu else 0
        self.cross_names = layer_tensors("cross", facts.decoder_layers)
        self.past_names = layer_tensors("past", facts.decoder_layers)
        self.present_names = layer_tensors("present", facts.decoder_layers)

    def _providers(
        self, names: Sequence[str], device_id: int, trt_cache_dir: str | None
    ) -> list[Any]:
        available = set(self._ort.get_available_providers())
        chosen: list[Any] = []
        for name in names:
            provider = PROVIDERS.get(name.strip().lower())
            if provider is None:
                raise ValueError(f"unknown provider {name!r}; expected one of {sorted(PROVIDERS)}")
            if provider not in available or provider == "CPUExecutionProvider":
                continue
            settings: dict[str, Any] = {"device_id": device_id}
            if provider == "TensorrtExecutionProvider":
                settings.update(trt_fp16_enable=True, trt_engine_cache_enable=True)
                if trt_cache_dir:
                    settings["trt_engine_cache_path"] = trt_cache_dir
            chosen.append((provider, settings))
        return [*chosen, "CPUExecutionProvider"]

    @property
    def providers(self) -> dict[str, list[str]]:
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    def _value(self, array: Array) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.device, self.device_id
        )

    def encode(self, features: Array) -> list[Any]:
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(
            WhisperEncoderIn.INPUT_FEATURES, np.ascontiguousarray(features, np.float32)
        )
        for name in self.cross_names:  # last_hidden_state is left unbound: not fetched
            binding.bind_output(name, self.device, self.device_id)
        self.encoder.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def step(self, input_ids: Array, past: list[Any] | None, cross: list[Any]) -> tuple[Array, Any]:
        f = self.facts
        binding = self.decoder.io_binding()
        binding.bind_cpu_input(
            WhisperDecoderIn.INPUT_IDS, np.ascontiguousarray(input_ids, np.int64)
        )
        if past is None:  # the first step: an empty past (length 0), from the host
            empty = np.zeros((input_ids.shape[0], f.decoder_heads, 0, f.head_dim), np.float32)
            for name in self.past_names:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(self.past_names, past, strict=True):
                binding.bind_ortvalue_input(name, value)
        for name, value in zip(self.cross_names, cross, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(WhisperDecoderOut.LOGITS, "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device, self.device_id)
        self.decoder.run_with_iobinding(binding)
        logits, *presents = binding.get_outputs()
        return np.array(logits.numpy(), dtype=np.float32), presents

    def select(self, state: list[Any], rows: Array) -> list[Any]:
        """Compaction (a few times per batch at most): through the host, rows taken in numpy."""
        return [self._value(value.numpy()[rows]) for value in state]
