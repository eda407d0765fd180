"""Long audio a block at a time: resampling in blocks that join seamlessly, and the overlap-add
weights of a chunk grid over any stretch, so a separator's memory stays bounded by a few blocks
whatever the job's length.

``resampled_blocks`` gives, block after block, what ``scipy.signal.resample_poly`` gives for the
whole signal (to float rounding): each block is resampled with a margin of input on either side
wider than the polyphase filter, and block edges fall on input samples that map to whole output
samples (multiples of the reduced ``down`` factor), so no output sample is cut or repeated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from polydub.serving.htdemucs import Chunking

# Read samples [lo, hi) of a signal, samples along the first axis.
Read = Callable[[int, int], NDArray[Any]]


def resampled_length(samples: int, rate: int, to: int) -> int:
    """``resample_poly``'s output length: ceil(samples * to / rate)."""
    g = math.gcd(rate, to)
    return -(-samples * (to // g) // (rate // g))


def resampled_blocks(
    read: Read, samples: int, rate: int, to: int, block: int
) -> Iterator[NDArray[np.float32]]:
    """The signal ``read`` gives (``samples`` long, at ``rate``) at ``to``, in consecutive blocks
    of about ``block`` input samples: concatenated, they are ``resample_poly`` of the whole."""
    if rate == to:
        for lo in range(0, samples, block):
            yield np.asarray(read(lo, min(samples, lo + block)), np.float32)
        return
    g = math.gcd(rate, to)
    up, down = to // g, rate // g
    # scipy's filter reaches 10 * max(up, down) samples of the upsampled signal either side.
    reach = 10 * max(up, down) / up + 16
    margin = down * math.ceil(reach / down)
    step = max(down, block // down * down)
    for a in range(0, samples, step):
        b = min(samples, a + step)
        lo, hi = max(0, a - margin), min(samples, b + margin)
        out = resample_poly(np.asarray(read(lo, hi), np.float64), up, down, axis=0)
        skip = (a - lo) // down * up
        count = -(-b * up // down) - a // down * up
        yield out[skip : skip + count].astype(np.float32)


def chunk_weights(chunking: Chunking, samples: int, lo: int, hi: int) -> NDArray[np.float64]:
    """The summed cross-fades over samples [lo, hi) of the chunks of a ``samples`` long signal
    (``chunking.starts``): what ``polydub.serving.htdemucs.OverlapAdd`` divides its total by."""
    fade = chunking.fade()
    weight = np.zeros(max(0, hi - lo))
    first = max(0, -(-(lo - chunking.length + 1) // chunking.step))
    last = min(len(chunking.starts(samples)), (hi - 1) // chunking.step + 1)
    for i in range(first, last):
        start = i * chunking.step
        a, b = max(lo, start), min(hi, start + chunking.length)
        weight[a - lo : b - lo] += fade[a - start : b - start]
    return weight
