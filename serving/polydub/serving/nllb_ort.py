"""NLLB-200's two exported graphs in onnxruntime sessions of this process: what the ``nllb``
Triton model, the exporter's checks, the tests and the benchmark run the beam search over.

Served as separate Triton models called once per decode step over BLS, every step shipped the
cross-attention K/V and the whole KV cache through the python backend's shared memory (~300 MB
per step for 16 sentences at NLLB-600M), and the graphs ran with one thread: the served path
reached 0.55x CTranslate2 where the same graphs in-process reached 0.95x (issue 17). Here a
step costs the decoder's compute and one reorder of the cache:

* the present K/V are written by onnxruntime straight into buffers this object keeps (bound
  with io_binding), and the beam reorder gathers them into a second pair of buffers that the
  next step reads as its past: no fresh arrays (and page faults) of the cache's size per step;
* the buffers grow with the batch and the length, and are given back by ``release`` when a
  batch is done, so an idle instance does not hold its largest batch's cache.

onnxruntime is imported when the sessions open: the Triton image's (onnxruntime-gpu) or the
export's, not a dependency of polydub-serving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polydub.serving.names import NllbDecoderIn, NllbDecoderOut, NllbEncoderIn, NllbEncoderOut
from polydub.serving.nllb_search import FloatArray, IntArray, Past
from polydub.serving.ort import providers, session_options

_GROWTH = 1.25  # a buffer that must grow takes this much more, so it grows a few times a batch


class _Buffer:
    """A flat float32 buffer handing out contiguous views of any shape that fits."""

    def __init__(self) -> None:
        self.flat: FloatArray = np.empty(0, np.float32)

    def view(self, shape: tuple[int, ...]) -> FloatArray:
        size = math.prod(shape)
        if self.flat.size < size:
            self.flat = np.empty(int(size * _GROWTH), np.float32)
        return self.flat[:size].reshape(shape)

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
        self._present = (_Buffer(), _Buffer())
        self._past = (_Buffer(), _Buffer())

    @property
    def providers(self) -> dict[str, list[str]]:
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    def encode(
        self, input_ids: IntArray, attention_mask: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        """-> cross_key, cross_value [batch, layers, heads, src_len, head_dim]"""
        key, value = self.encoder.run(
            [NllbEncoderOut.CROSS_KEY, NllbEncoderOut.CROSS_VALUE],
            {NllbEncoderIn.INPUT_IDS: input_ids, NllbEncoderIn.ATTENTION_MASK: attention_mask},
        )
        return key, value

    def decode(self, feeds: dict[str, Any]) -> tuple[FloatArray, IntArray, FloatArray, FloatArray]:
        """One step -> top_log_probs, top_ids, present_key, present_value. The present K/V are
        views of this object's buffers, valid until the next ``decode``: ``select`` them (or
        copy) before feeding them back."""
        binding = self.decoder.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        batch, layers, heads, past_len, head_dim = feeds[NllbDecoderIn.PAST_KEY].shape
        shape = (batch, layers, heads, past_len + feeds[NllbDecoderIn.INPUT_IDS].shape[1], head_dim)
        presents = [buffer.view(shape) for buffer in self._present]
        binding.bind_output(NllbDecoderOut.TOP_LOG_PROBS, "cpu")
        binding.bind_output(NllbDecoderOut.TOP_IDS, "cpu")
        for name, array in zip(
            (NllbDecoderOut.PRESENT_KEY, NllbDecoderOut.PRESENT_VALUE), presents, strict=True
        ):
            binding.bind_output(name, "cpu", 0, np.float32, list(shape), array.ctypes.data)
        self.decoder.run_with_iobinding(binding)
        top_log_probs, top_ids = (value.numpy() for value in binding.get_outputs()[:2])
        return top_log_probs, top_ids, presents[0], presents[1]

    def select(self, present: Past, rows: IntArray) -> Past:
        """The next step's past: the rows of ``present`` each new beam continues, gathered into
        this object's past buffers (the previous past is no longer read by then)."""
        shape = (len(rows), *present[0].shape[1:])
        key, value = (buffer.view(shape) for buffer in self._past)
        np.take(present[0], rows, axis=0, out=key)
        np.take(present[1], rows, axis=0, out=value)
        return key, value

    def release(self) -> None:
        """Give the cache buffers back (between batches)."""
        for buffer in (*self._present, *self._past):
            buffer.release()
