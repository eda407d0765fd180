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
from polydub.serving.ort import available_cpus, providers, session_options
from polydub.serving.whisper_features import Array
from polydub.serving.whisper_text import WhisperFacts


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

    Memory (CPU): ``encoder_arena`` False (the default) gives the encoder's buffers back after
    each run. Its activations are large (attention scores alone are batch x heads x 1500 x 1500
    floats, 1.15 GB per layer at whisper-base with 16 windows) and their size follows the batch:
    with onnxruntime's arena every new batch size added blocks that were never released, and an
    instance grew to 7.1 GB in ten batches (3.3 GB after the first batch of 16). Without it the
    instance stays near 0.5 GB between batches. ``encoder_batch``: the encoder runs on at most
    that many windows at a time (their cross K/V written straight into the batch's tensors), so
    the peak while encoding is bounded too. The decoder keeps its arena (``decoder_arena``):
    its step buffers are small and reused every step.
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
        encoder_arena: bool = False,
        decoder_arena: bool = True,
        encoder_batch: int = 4,
    ) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.facts = facts
        self.encoder_batch = max(1, encoder_batch)
        threads = threads or available_cpus()
        self.encoder = ort.InferenceSession(
            str(encoder),
            session_options(threads, arena=encoder_arena),
            providers=providers(encoder_providers, device_id, trt_cache_dir),
        )
        self.decoder = ort.InferenceSession(
            str(decoder),
            session_options(threads, arena=decoder_arena),
            providers=providers(decoder_providers, device_id, trt_cache_dir),
        )
        on_gpu = "CUDAExecutionProvider" in self.decoder.get_providers()
        self.device = "cuda" if on_gpu else "cpu"
        self.device_id = device_id if on_gpu else 0
        self.cross_names = layer_tensors("cross", facts.decoder_layers)
        self.past_names = layer_tensors("past", facts.decoder_layers)
        self.present_names = layer_tensors("present", facts.decoder_layers)

    @property
    def providers(self) -> dict[str, list[str]]:
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    def _value(self, array: Array) -> Any:
        return self._ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), self.device, self.device_id
        )

    def encode(self, features: Array) -> list[Any]:
        if self.device == "cpu" and features.shape[0] > self.encoder_batch:
            return self._encode_in_parts(features)
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(
            WhisperEncoderIn.INPUT_FEATURES, np.ascontiguousarray(features, np.float32)
        )
        for name in self.cross_names:  # last_hidden_state is left unbound: not fetched
            binding.bind_output(name, self.device, self.device_id)
        self.encoder.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def _encode_in_parts(self, features: Array) -> list[Any]:
        """The encoder over ``encoder_batch`` windows at a time; each part's cross K/V are
        written into its rows of the whole batch's tensors (no copy, no concatenation)."""
        f = self.facts
        positions = features.shape[-1] // 2  # the encoder's stride-2 convolution
        shape = (features.shape[0], f.decoder_heads, positions, f.head_dim)
        cross = [np.empty(shape, np.float32) for _ in self.cross_names]
        for start in range(0, features.shape[0], self.encoder_batch):
            part = np.ascontiguousarray(features[start : start + self.encoder_batch], np.float32)
            binding = self.encoder.io_binding()
            binding.bind_cpu_input(WhisperEncoderIn.INPUT_FEATURES, part)
            for name, whole in zip(self.cross_names, cross, strict=True):
                rows = whole[start : start + part.shape[0]]  # contiguous: batch is the outer dim
                binding.bind_output(name, "cpu", 0, np.float32, list(rows.shape), rows.ctypes.data)
            self.encoder.run_with_iobinding(binding)
        return [self._ort.OrtValue.ortvalue_from_numpy(whole) for whole in cross]

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
