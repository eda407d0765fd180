"""NLLB-200's two exported graphs in onnxruntime sessions of this process: what the ``nllb``
Triton model, the exporter's checks, the tests and the benchmark run the beam search over.

Served as separate Triton models called once per decode step over BLS, every step shipped the
cross-attention K/V and the whole KV cache through the python backend's shared memory (~300 MB
per step for 16 sentences at NLLB-600M), and the graphs ran with one thread: the served path
reached 0.55x CTranslate2 where the same graphs in-process reached 0.95x (issue 17). Here a
step costs the decoder's compute and one reorder of the cache:

* the present K/V (one tensor per layer) are written by onnxruntime straight into a buffer
  this object keeps (bound with io_binding), and the beam reorder gathers them into a second
  buffer that the next step reads as its past: no fresh arrays (and page faults) of the
  cache's size per step;
* the buffers grow with the batch and the length, and are given back by ``release`` when a
  batch is done, so an idle instance does not hold its largest batch's cache.

onnxruntime is imported when the sessions open: the Triton image's (onnxruntime-gpu) or the
export's, not a dependency of polydub-serving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from polydub.serving.names import (
    NllbDecoderIn,
    NllbDecoderOut,
    NllbEncoderIn,
    layer_tensors,
)
from polydub.serving.nllb_search import FloatArray, IntArray, Past
from polydub.serving.ort import providers, session_options

_GROWTH = 1.25  # a buffer that must grow takes this much more, so it grows a few times a batch


class _Buffer:
    """A flat float32 buffer handing out contiguous views of any shapes that fit."""

    def __init__(self) -> None:
        self.flat: FloatArray = np.empty(0, np.float32)

    def views(self, shape: tuple[int, ...], count: int) -> list[FloatArray]:
        """``count`` arrays of ``shape``, one after the other in the buffer."""
        size = math.prod(shape)
        if self.flat.size < size * count:
            self.flat = np.empty(int(size * count * _GROWTH), np.float32)
        return [self.flat[i * size : (i + 1) * size].reshape(shape) for i in range(count)]

    def release(self) -> None:
        self.flat = np.empty(0, np.float32)


class OrtNllb:
    """The encoder and the decoder graph (``polydub.export.nllb_graphs``) in this process.

    ``threads``: intra-op threads per session; 0: one per CPU this process may run on (set
    explicitly: onnxruntime's default pins its threads to cores, and a pinned thread cannot
    leave a core another process keeps busy). ``*_providers``: short names in order of
    preference (``cpu``, ``cuda``, ``tensorrt``). On a GPU the cache still crosses to the host
    once per step for the beam reorder (numpy); the graphs' compute runs on the device.
    """

    def __init__(
        self,
        encoder: str | Path,
        decoder: str | Path,
        *,
        threads: int = 0,
        encoder_providers: Sequence[str] = ("cpu",),
        decoder_providers: Sequence[str] = ("cpu",),
        device_id: int = 0,
        trt_cache_dir: str | None = None,
    ) -> None:
        import onnxruntime as ort

        options = session_options(threads)
        self.encoder = ort.InferenceSession(
            str(encoder), options, providers=providers(encoder_providers, device_id, trt_cache_dir)
        )
        self.decoder = ort.InferenceSession(
            str(decoder), options, providers=providers(decoder_providers, device_id, trt_cache_dir)
        )
        self.threads = options.intra_op_num_threads
        inputs = {i.name for i in self.decoder.get_inputs()}
        self.layers = sum(1 for name in inputs if name.startswith("past_key."))
        if not self.layers:
            # Exports before per-layer K/V stacked the layers in one past_key input.
            raise ValueError(
                f"{decoder} has no per-layer past_key.N inputs: it was exported by an older "
                "polydub; export it again (`polydub models export --family nllb`)"
            )
        self.cross_names = layer_tensors("cross", self.layers)
        self.past_names = layer_tensors("past", self.layers)
        self.present_names = layer_tensors("present", self.layers)
        self._present = _Buffer()
        self._past = _Buffer()

    @property
    def providers(self) -> dict[str, list[str]]:
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    def encode(self, input_ids: IntArray, attention_mask: IntArray) -> Past:
        """-> cross K/V per layer [batch, heads, src_len, head_dim], in layer_tensors order"""
        outputs = self.encoder.run(
            self.cross_names,
            {NllbEncoderIn.INPUT_IDS: input_ids, NllbEncoderIn.ATTENTION_MASK: attention_mask},
        )
        return tuple(outputs)

    def decode(
        self, input_ids: IntArray, encoder_attention_mask: IntArray, cross: Past, past: Past
    ) -> tuple[FloatArray, IntArray, Past]:
        """One step -> top_log_probs, top_ids, present K/V per layer. The presents are views
        of this object's buffer, valid until the next ``decode``: ``select`` them (or copy)
        before feeding them back."""
        binding = self.decoder.io_binding()
        binding.bind_cpu_input(NllbDecoderIn.INPUT_IDS, np.ascontiguousarray(input_ids))
        binding.bind_cpu_input(
            NllbDecoderIn.ENCODER_ATTENTION_MASK, np.ascontiguousarray(encoder_attention_mask)
        )
        for names, arrays in ((self.past_names, past), (self.cross_names, cross)):
            for name, array in zip(names, arrays, strict=True):
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        batch, heads, past_len, head_dim = past[0].shape
        shape = (batch, heads, past_len + input_ids.shape[1], head_dim)
        presents = self._present.views(shape, len(self.present_names))
        binding.bind_output(NllbDecoderOut.TOP_LOG_PROBS, "cpu")
        binding.bind_output(NllbDecoderOut.TOP_IDS, "cpu")
        for name, array in zip(self.present_names, presents, strict=True):
            binding.bind_output(name, "cpu", 0, np.float32, list(shape), array.ctypes.data)
        self.decoder.run_with_iobinding(binding)
        top_log_probs, top_ids = (value.numpy() for value in binding.get_outputs()[:2])
        return top_log_probs, top_ids, tuple(presents)

    def select(self, present: Past, rows: IntArray) -> Past:
        """The next step's past: the rows of ``present`` each new beam continues, gathered into
        this object's past buffer (the previous past is no longer read by then)."""
        shape = (len(rows), *present[0].shape[1:])
        past = self._past.views(shape, len(present))
        for source, target in zip(present, past, strict=True):
            # mode="clip": with the default "raise", numpy writes into a temporary and copies
            # that into ``out`` (so a bad index leaves it untouched): a second copy of the whole
            # cache per step, 4x the time of the gather itself. The rows come from the search.
            np.take(source, rows, axis=0, out=target, mode="clip")
        return tuple(past)

    def release(self) -> None:
        """Give the cache buffers back (between batches)."""
        self._present.release()
        self._past.release()
