"""Packed Whisper windows mapped back to their regions: a decoded segment that spans two regions
must not move words into the wrong one.

The decoded output is synthetic but goes through the served code: token sequences with
timestamp tokens are cut into segments by ``whisper_text.build_segments`` (what the
``whisper`` BLS model returns), then mapped back by ``asr_packing`` / ``AsrClient``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.orchestrator.inference.asr import AsrClient, AudioRegion, TranscriptSegment
from polydub.orchestrator.inference.asr_packing import (
    PACK_GAP_S,
    PackedRegion,
    neighbours,
    pack_regions,
    unpack_segments,
    unpack_window,
)
from polydub.serving import whisper_text as wr

pytestmark = pytest.mark.unit
SR = 16000
EOT, TB = 1000, 1006  # end of text, first timestamp token (<|0.00|>)
FACTS = wr.WhisperFacts(
    checkpoint="synthetic", n_mels=80, decoder_layers=1, decoder_heads=1, head_dim=1,
    vocab_size=2600, max_target_positions=448, eot=EOT, sot=1001, translate=1002,
    transcribe=1003, no_speech=1004, no_timestamps=1005, timestamp_begin=TB,
    languages={"en": 1007}, suppress_tokens=(), begin_suppress_tokens=(),
)  # fmt: skip
# Region k (1-9) says " region<k> says<k>": tokens 10k+1 and 10k+2 ("Ġ" is the space byte).
VOCAB = {
    f"Ġ{word}{k}": 10 * k + n for k in range(1, 10) for n, word in ((1, "region"), (2, "says"))
}
DETOK = wr.Detokenizer(VOCAB, EOT)


def words(k: int) -> list[int]:
    return [10 * k + 1, 10 * k + 2]


def ts(seconds: float) -> int:
    return TB + round(seconds / wr.TIME_PRECISION)


def segments_of(tokens: Sequence[int], duration: float) -> list[TranscriptSegment]:
    """What the BLS model returns for a window that decoded ``tokens``, as the client reads it."""
    built = wr.build_segments(list(tokens), [-0.1] * len(tokens), FACTS, DETOK, duration)
    return [TranscriptSegment(s.start, s.end, s.text, s.avg_logprob, 0.1, s.tokens) for s in built]


def text(segments: Sequence[TranscriptSegment]) -> str:
    return "".join(s.text for s in segments)


# -------------------------------------------------------------------------- unpack_window

PLACEMENTS = [
    PackedRegion(0, 0, 0.0, 6.0),
    PackedRegion(1, 0, 7.0, 5.0),
    PackedRegion(2, 0, 13.0, 4.0),
]


def test_segment_spanning_two_regions_sends_both_to_be_decoded_alone() -> None:
    # Whisper read regions 0 and 1 as one segment (0.0-11.5): nothing says where 0 ends.
    tokens = [ts(0.0), *words(1), *words(2), ts(11.5), ts(13.2), *words(3), ts(16.8)]
    out = unpack_window(segments_of(tokens, 17.0), PLACEMENTS)
    assert out.redo == {0, 1}
    assert out.segments[0] == [] and out.segments[1] == []  # no guessed split of the words
    [third] = out.segments[2]
    assert third.text == " region3 says3"
    assert (third.start, third.end) == pytest.approx((0.2, 3.8))


def test_timestamp_slack_into_the_next_region_is_not_a_span() -> None:
    # Region 0's segment ends 0.2 s into region 1 (which has its own): slack, clamped.
    tokens = [ts(0.5), *words(1), ts(7.2), ts(7.4), *words(2), ts(11.9)]
    tokens += [ts(13.0), *words(3), ts(17.0)]
    out = unpack_window(segments_of(tokens, 17.0), PLACEMENTS)
    assert out.redo == frozenset()
    [first], [second] = out.segments[0], out.segments[1]
    assert first.text == " region1 says1" and (first.start, first.end) == pytest.approx((0.5, 6.0))
    assert second.text == " region2 says2" and (second.start, second.end) == pytest.approx(
        (0.4, 4.9)
    )
    assert text(out.segments[2]) == " region3 says3"


def test_reaching_into_a_region_without_words_of_its_own_is_a_span() -> None:
    # Region 1 got nothing; region 0's segment reaches 0.2 s into it: its words may be there.
    tokens = [ts(0.0), *words(1), *words(2), ts(7.2), ts(13.0), *words(3), ts(17.0)]
    out = unpack_window(segments_of(tokens, 17.0), PLACEMENTS)
    assert out.redo == {0, 1}
    assert text(out.segments[2]) == " region3 says3"


def test_short_region_inside_a_segment_counts_as_spanned() -> None:
    placements = [
        PackedRegion(0, 0, 0.0, 5.0),
        PackedRegion(1, 0, 6.0, 0.2),
        PackedRegion(2, 0, 7.2, 5.0),
    ]
    tokens = [ts(0.0), *words(1), ts(4.8), ts(5.9), *words(2), *words(3), ts(12.0)]
    out = unpack_window(segments_of(tokens, 12.2), placements)
    assert out.redo == {1, 2}
    assert text(out.segments[0]) == " region1 says1"


def test_segments_in_a_gap_go_to_the_nearest_region_in_order() -> None:
    tokens = [ts(0.0), *words(1), ts(3.0), ts(3.0), *words(2), ts(6.0), ts(6.1), *words(3)]
    tokens += [ts(6.5), ts(12.2), *words(4), ts(12.6)]  # both in gaps: 6.1-6.5, 12.2-12.6
    out = unpack_window(segments_of(tokens, 17.0), PLACEMENTS)
    assert out.redo == frozenset()
    assert text(out.segments[0]) == " region1 says1 region2 says2 region3 says3"
    times = [t for s in out.segments[0] for t in (s.start, s.end)]
    assert times == pytest.approx([0.0, 3.0, 3.0, 6.0, 6.0, 6.0])  # the gap one clamped
    [fourth] = out.segments[1]
    assert fourth.text == " region4 says4" and (fourth.start, fourth.end) == pytest.approx((5, 5))
    assert out.segments[2] == []


def test_pack_regions_default_gap_and_neighbours() -> None:
    [window] = pack_regions([5.0] * 5)
    assert [p.offset for p in window] == [0.0, 6.0, 12.0, 18.0, 24.0] and PACK_GAP_S == 1.0
    assert neighbours(window, 0) == [1] and neighbours(window, 2) == [1, 3]
    assert neighbours(window, 4) == [3]


def _seg(start: float, end: float, text: str = "") -> TranscriptSegment:
    return TranscriptSegment(start, end, text or f"{start}-{end}", -0.1, 0.01)


def test_pack_regions_fills_windows_in_order() -> None:
    windows = pack_regions([10.0, 9.0, 10.0, 12.0, 30.0], window_s=30.0, gap_s=0.5)
    assert windows == [
        [
            PackedRegion(0, 0, 0.0, 10.0),
            PackedRegion(1, 0, 10.5, 9.0),
            PackedRegion(2, 0, 20.0, 10.0),
        ],
        [PackedRegion(3, 1, 0.0, 12.0)],
        [PackedRegion(4, 2, 0.0, 30.0)],
    ]
    with pytest.raises(ValueError, match="longer than a window"):
        pack_regions([31.0])


def test_unpack_segments_maps_back_to_each_region() -> None:
    placements = [PackedRegion(0, 0, 0.0, 10.0), PackedRegion(1, 0, 10.5, 9.0)]
    segments = [_seg(0.0, 4.0), _seg(4.0, 10.2), _seg(10.5, 15.0), _seg(15.0, 20.0)]
    out = unpack_segments(segments, placements)
    assert [(s.start, s.end) for s in out[0]] == [(0.0, 4.0), (4.0, 10.0)]
    # 15.0-20.0 runs past region 1's end (10.5 + 9.0 = 19.5): clamped to it.
    assert [(s.start, s.end) for s in out[1]] == [(0.0, 4.5), (4.5, 9.0)]


# ------------------------------------------------------------------ the client, end to end


class ScriptedWhisper:
    """The ``whisper`` model on synthetic audio: each run of non-zero samples is one region,
    its constant amplitude 0.1 * k its number k. Alone, a region decodes to its own words
    (none for the ``mute`` ones). Packed, a window with several regions decodes as ``mode``
    says for its first two: ``join`` reads them as one segment, ``swallow`` reads the second's
    words into the first's segment with the first's end time, ``slack`` ends the first's
    segment 0.2 s into the second; any other mode, or later regions, decode as alone."""

    def __init__(self, mode: str = "", mute: frozenset[int] = frozenset()) -> None:
        self.mode = mode
        self.mute = mute
        self.requests: list[list[int]] = []  # the regions each request held

    def tokens(self, runs: list[tuple[float, float, int]]) -> list[int]:
        out: list[int] = []
        pending = list(runs)
        if len(runs) >= 2 and self.mode:
            (s0, e0, k0), (s1, e1, k1) = runs[:2]
            pending = pending[2:]
            if self.mode == "join":
                out += [ts(s0), *words(k0), *words(k1), ts(e1)]
            elif self.mode == "swallow":
                out += [ts(s0), *words(k0), *words(k1), ts(e0)]
            else:
                out += [ts(s0), *words(k0), ts(s1 + 0.2), ts(s1 + 0.2), *words(k1), ts(e1)]
        for start, end, k in pending:
            if k not in self.mute:
                out += [ts(start), *words(k), ts(end)]
        return out

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str],
        *,
        deadline: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        audio = inputs["audio"][0]
        loud = np.flatnonzero(np.abs(audio) > 0.075)  # the clips, not the packing's noise fill
        runs: list[tuple[float, float, int]] = []
        if loud.size:
            breaks = np.flatnonzero(np.diff(loud) > 1)
            starts = np.concatenate([[loud[0]], loud[breaks + 1]])
            ends = np.concatenate([loud[breaks], [loud[-1]]]) + 1
            runs = [
                (s / SR, e / SR, round(float(audio[s]) * 10))
                for s, e in zip(starts, ends, strict=True)
            ]
        self.requests.append([k for _, _, k in runs])
        tokens = self.tokens(runs)
        built = wr.build_segments(tokens, [-0.1] * len(tokens), FACTS, DETOK, audio.size / SR)

        def one(value: Any, dtype: Any = np.object_) -> NDArray[Any]:
            return np.array([[value]], dtype)

        return {
            "text": one(DETOK.decode(tokens).encode()),
            "tokens": np.array([tokens], np.int64).reshape(1, -1),
            "segments": one(json.dumps([s.to_dict() for s in built]).encode()),
            "detected_language": one(b"en"),
            "language_probability": one(0.9, np.float32),
            "avg_logprob": one(-0.1, np.float32),
            "no_speech_prob": one(0.1, np.float32),
        }


def regions(durations: Sequence[float], silent: Sequence[int] = ()) -> list[AudioRegion]:
    """Region k (from 1) is ``durations[k-1]`` s of amplitude 0.1 * k, 20 s after the last."""
    return [
        AudioRegion(20.0 * k, np.full(round(d * SR), 0.0 if k in silent else 0.1 * k, np.float32))
        for k, d in enumerate(durations, start=1)
    ]


def check(results: Sequence[Any], given: Sequence[AudioRegion], empty: Sequence[int] = ()) -> None:
    """Each region has exactly its own words, inside its own time, in order."""
    assert len(results) == len(given)
    for k, (region, result) in enumerate(zip(given, results, strict=True), start=1):
        assert result.text == ("" if k in empty else f"region{k} says{k}")
        starts = [s.start for s in result.segments]
        assert starts == sorted(starts)
        for s in result.segments:
            assert region.start <= s.start <= s.end <= region.start + region.duration + 1e-9


async def test_joined_regions_are_decoded_alone_and_get_their_own_words() -> None:
    fake = ScriptedWhisper("join")
    given = regions([6.0, 5.0, 4.0, 7.0])
    results = await AsrClient(fake).transcribe_packed(given, language="eng")
    check(results, given)
    assert fake.requests == [[1, 2, 3, 4], [1], [2]]  # one packed window, the two alone


async def test_swallowed_region_and_its_neighbours_are_decoded_alone() -> None:
    # Region 2's words went into region 1's segment, whose times stop short of region 2.
    fake = ScriptedWhisper("swallow")
    given = regions([6.0, 5.0, 4.0])
    results = await AsrClient(fake).transcribe_packed(given, language="eng")
    check(results, given)
    assert fake.requests == [[1, 2, 3], [2], [1], [3]]


async def test_empty_region_without_words_alone_leaves_its_neighbours_packed() -> None:
    fake = ScriptedWhisper(mute=frozenset({2}))  # e.g. a cough that VAD took for speech
    given = regions([6.0, 1.0, 4.0, 3.0], silent=[4])
    results = await AsrClient(fake).transcribe_packed(given, language="eng")
    check(results, given, empty=[2, 4])
    # Region 2 is tried alone once; region 4 (digital silence) is not worth a window.
    assert fake.requests == [[1, 2, 3], [2]]


async def test_timestamp_slack_costs_no_extra_window() -> None:
    fake = ScriptedWhisper("slack")
    given = regions([6.0, 5.0, 4.0, 7.0, 9.0])
    results = await AsrClient(fake).transcribe_packed(given, language="eng")
    check(results, given)
    assert fake.requests == [[1, 2, 3, 4], [5]]
    assert results[0].segments[0].end == pytest.approx(20.0 + 6.0)  # clamped to region 1
