"""NLLB-200's two exported graphs in onnxruntime sessions of this process: what the ``nllb``
Triton model, the exporter's checks, the tests and the benchmark run the beam search over.

Served as separate Triton models called once per decode step over BLS, every step shipped the
cross-attention K/V and the whole KV cache through the python backend's shared memory (~300 MB
per step for 16 sentences at NLLB-600M), and the graphs ran with one thread: the served path
reached 0.55x CTranslate2 where the same graphs in-process reached 0.95x (issue 17). Here a
step costs the decoder's compute and one reorder of the cache:

* the decoder gives back only this step's K/V (``new_*.i``; it reads the past and the new part
  without joining them), written by onnxruntime straight into a buffer this object keeps
  (bound with io_binding);
* ``select`` builds the next step's past in one pass, each new beam's parent row of the past
  followed by the parent's new K/V, into the one of two buffers that the current past is not
  in: one copy of the cache per step, where a graph that appended the new K/V copied it once
  more (issue 17's profile: 14% of the decoder's kernel time at NLLB-600M's shape);
* the buffers grow with the batch and the length, and are given back by ``release`` when a
  batch is done, so an idle instance does not hold its largest batch's cache.

onnxruntime is imported when the sessions open: the Triton image's (onnxruntime-gpu) or the
export's, not a dependency of polydub-serving.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from polydub.serving.names import (
    NLLB_CROSS_SOURCES,
    NllbDecoderIn,
    NllbDecoderOut,
    NllbEncoderIn,
    layer_tensors,
)
from polydub.serving.nllb_search import FloatArray, IntArray, Past
from polydub.serving.ort import providers, session_options

# A buffer that must grow takes twice what it needs. The cache grows by a position per step,
# and every new buffer's pages are faulted in on first write: growing by 1.25x made the past's
# two buffers reallocate ~14 times each over 60 steps, and the beam reorder took 2.5x longer
# than with 2x (16 sentences x 4 beams at NLLB-600M's shape). Pages never written are never
# resident, so the headroom costs address space, not memory.
_GROWTH = 2.0


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
    preference (``cpu``, ``cuda``, ``tensorrt``). On a GPU the graphs' compute runs on the
    device, but the beam reorder is numpy's: each step uploads the past and brings this step's
    K/V back to the host.
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
        inputs = {i.name: i.shape for i in self.decoder.get_inputs()}
        self.layers = sum(1 for name in inputs if name.startswith("past_key."))
        self.cross_names = layer_tensors("cross", self.layers)
        # Exports before issue 17's change took one cross K/V row per beam.
        cross_axis = inputs.get(self.cross_names[0], [None])[0] if self.layers else None
        self.shares_cross = cross_axis == NLLB_CROSS_SOURCES
        self.past_names = layer_tensors("past", self.layers)
        self.new_names = layer_tensors("new", self.layers)
        outputs = {o.name for o in self.decoder.get_outputs()}
        if not self.layers or not outputs.issuperset(self.new_names):
            # Older exports stacked the layers in one past_key input, or gave back the whole
            # cache (present_*.i) instead of this step's part.
            raise ValueError(
                f"{decoder} has no per-layer past_key.N inputs and new_key.N outputs: it was "
                "exported by an older polydub; export it again "
                "(`polydub models export --family nllb`)"
            )
        self._new = _Buffer()
        self._pasts = (_Buffer(), _Buffer())

    def sibling(self) -> OrtNllb:
        """The same sessions with buffers of its own: onnxruntime sessions take concurrent runs,
        so searches in several threads share the weights, each reordering its own cache."""
        other = copy.copy(self)
        other._new = _Buffer()
        other._pasts = (_Buffer(), _Buffer())
        return other

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
        """One step -> top_log_probs, top_ids, this step's K/V per layer [batch, heads, dec_len,
        head_dim]. Those are views of this object's buffer, valid until the next ``decode``:
        ``select`` them (or copy) before the next step. ``encoder_attention_mask`` and ``cross``
        are fed as ``nllb_translate.cross_index`` picks them: one per source (this graph
        ``shares_cross`` and the rows are a run of beams per source) or one per row."""
        binding = self.decoder.io_binding()
        binding.bind_cpu_input(NllbDecoderIn.INPUT_IDS, np.ascontiguousarray(input_ids))
        binding.bind_cpu_input(
            NllbDecoderIn.ENCODER_ATTENTION_MASK, np.ascontiguousarray(encoder_attention_mask)
        )
        for names, arrays in ((self.past_names, past), (self.cross_names, cross)):
            for name, array in zip(names, arrays, strict=True):
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        batch, heads, _, head_dim = past[0].shape
        shape = (batch, heads, input_ids.shape[1], head_dim)
        new = self._new.views(shape, len(self.new_names))
        binding.bind_output(NllbDecoderOut.TOP_LOG_PROBS, "cpu")
        binding.bind_output(NllbDecoderOut.TOP_IDS, "cpu")
        for name, array in zip(self.new_names, new, strict=True):
            binding.bind_output(name, "cpu", 0, np.float32, list(shape), array.ctypes.data)
        self.decoder.run_with_iobinding(binding)
        top_log_probs, top_ids = (value.numpy() for value in binding.get_outputs()[:2])
        return top_log_probs, top_ids, tuple(new)

    def select(self, past: Past | None, new: Past, rows: IntArray) -> Past:
        """The next step's past: for each new beam, row ``rows[i]`` of ``past`` (None: the first
        step, no past) followed by the same row of ``new``, gathered into the past buffer
        ``past`` is not in. Valid until the ``select`` after next, which reuses that buffer."""
        past_len = 0 if past is None else past[0].shape[2]
        _, heads, new_len, head_dim = new[0].shape
        buffer = next(
            b for b in self._pasts if past is None or not np.may_share_memory(past[0], b.flat)
        )
        target = buffer.views((len(rows), heads, past_len + new_len, head_dim), len(new))
        if past is None:
            for source, out in zip(new, target, strict=True):
                # mode="clip": with the default "raise", numpy gathers into a temporary and
                # copies that into ``out``. The rows come from the search.
                np.take(source, rows, axis=0, out=out, mode="clip")
            return tuple(target)
        parents = rows.tolist()
        # Row by row: a gather into the first past_len positions of ``out`` (not contiguous)
        # would go through a temporary, a second copy of the cache.
        for old, fresh, out in zip(past, new, target, strict=True):
            for row, parent in enumerate(parents):
                out[row, :, :past_len] = old[parent]
                out[row, :, past_len:] = fresh[parent]
        return tuple(target)

    def release(self) -> None:
        """Give the cache buffers back (between batches)."""
        for buffer in (self._new, *self._pasts):
            buffer.release()
