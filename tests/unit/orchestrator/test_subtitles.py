from dataclasses import dataclass

import pytest

from polydub.orchestrator.subtitles import (
    Cue,
    SubtitlePolicy,
    clean_text,
    format_timestamp,
    make_cues,
    parse_srt,
    parse_timestamp,
    parse_vtt,
    to_srt,
    to_vtt,
    wrap,
)

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Seg:
    start: float
    end: float
    text: str
    speaker: str | None = None


LONG = (
    "The quick brown fox jumps over the lazy dog. Then it runs into the forest, where nobody "
    "can see it anymore, not even the hunters."
)


def test_timestamps() -> None:
    assert format_timestamp(1.0) == "00:00:01,000"
    assert format_timestamp(3723.4567, ".") == "01:02:03.457"
    assert format_timestamp(59.9996) == "00:01:00,000"
    assert format_timestamp(-0.2) == "00:00:00,000"
    assert parse_timestamp("01:02:03,457") == 3723.457
    assert parse_timestamp("02:03.5") == 123.5


def test_short_segment_is_one_cue_one_line() -> None:
    cues = make_cues([Seg(1.0, 2.5, "  Hello   there!\n", "A")])
    assert cues == [Cue(1.0, 2.5, "Hello there!", "A")]


def test_long_segment_splits_at_the_sentence_and_shares_time_by_characters() -> None:
    cues = make_cues([Seg(1.0, 9.0, LONG)])
    assert [c.text for c in cues] == [
        "The quick brown fox\njumps over the lazy dog.",
        "Then it runs into the forest, where nobody\ncan see it anymore, not even the hunters.",
    ]
    # 44 of the 128 visible characters go to the first cue: 8 s * 44 / 128 = 2.75 s.
    assert [(c.start, c.end) for c in cues] == [(1.0, 3.75), (3.75, 9.0)]
    for cue in cues:
        assert len(cue.lines) <= 2 and all(len(line) <= 42 for line in cue.lines)


def test_long_duration_alone_forces_a_split_at_a_clause() -> None:
    cues = make_cues([Seg(0.0, 10.0, "Well, I think so")])  # 16 chars but 10 s on screen
    # 5 of the 15 visible characters: a third of the time each side of the cut.
    assert [(c.start, c.end, c.text) for c in cues] == [
        (0.0, 10 / 3, "Well,"),
        (10 / 3, 10.0, "I think so"),
    ]
    # One word cannot be split for time: it stays whole, shown at most 7 s.
    assert make_cues([Seg(2.0, 12.0, "Yes.")]) == [Cue(2.0, 9.0, "Yes.")]


def test_minimum_duration_extends_into_free_time_only() -> None:
    cues = make_cues([Seg(1.0, 1.3, "Yes."), Seg(1.5, 3.0, "No."), Seg(5.0, 5.2, "Maybe.")])
    assert [(c.start, c.end) for c in cues] == [(1.0, 1.5), (1.5, 3.0), (5.0, 5.8)]


def test_words_longer_than_a_line_and_scripts_without_spaces() -> None:
    assert wrap("a" * 50, 42, 2) == ["a" * 42, "a" * 8]
    assert wrap("a" * 90, 42, 2) is None
    cues = make_cues([Seg(0.0, 6.0, "这是一个很长的句子。" * 10)])  # 100 characters, no spaces
    assert len(cues) == 2 and all(
        c.text.replace("\n", "") == "这是一个很长的句子。" * 5 for c in cues
    )
    assert all(len(line) <= 42 for c in cues for line in c.lines)


def test_wrap_is_balanced() -> None:
    assert wrap("one two three four five six seven eight nine ten", 42, 2) == [
        "one two three four five",
        "six seven eight nine ten",
    ]


def test_empty_and_degenerate_segments_are_dropped_and_text_is_cleaned() -> None:
    assert make_cues([Seg(0.0, 1.0, "   "), Seg(2.0, 2.0, "x"), Seg(3.0, 4.0, "a\x00b\tc")]) == [
        Cue(3.0, 4.0, "a b c")
    ]
    assert clean_text("a\n\nb") == "a b"


def test_custom_policy() -> None:
    policy = SubtitlePolicy(max_chars=10, max_lines=1, min_duration=0.0, max_duration=100.0)
    cues = make_cues([Seg(0.0, 4.0, "aaaa bbbb cccc dddd")], policy)
    assert [c.text for c in cues] == ["aaaa bbbb", "cccc dddd"]
    assert [(c.start, c.end) for c in cues] == [(0.0, 2.0), (2.0, 4.0)]


def test_srt_round_trip_and_format() -> None:
    cues = make_cues([Seg(1.0, 9.0, LONG, "A"), Seg(10.0, 11.0, "a --> b", "B")])
    srt = to_srt(cues)
    assert srt.startswith("1\n00:00:01,000 --> 00:00:03,750\nThe quick brown fox\n")
    parsed = parse_srt(srt)
    assert [(c.start, c.end) for c in parsed] == [(c.start, c.end) for c in cues]
    assert [c.text for c in parsed][:2] == [c.text for c in cues][:2]
    assert parsed[2].text == "a -> b"  # no timing arrow inside the text
    labelled = to_srt(cues, speaker_labels=True)
    assert "(A) The quick brown fox" in labelled and "(B) a -> b" in labelled


def test_vtt_round_trip_with_speakers_and_escaping() -> None:
    cues = make_cues([Seg(1.0, 9.0, LONG, "Speaker A"), Seg(10.0, 11.0, "Tom & <Jerry>", "B")])
    vtt = to_vtt(cues)
    assert vtt.startswith("WEBVTT\n\n00:00:01.000 --> 00:00:03.750\n<v Speaker A>The quick")
    assert "Tom &amp; &lt;Jerry&gt;" in vtt
    assert parse_vtt(vtt) == cues


def test_parsers_accept_real_world_variants_and_reject_garbage() -> None:
    vtt = (
        "\ufeffWEBVTT - title\r\n\r\nNOTE a comment\r\n\r\ncue-1\r\n"
        "00:01.000 --> 00:02.500 align:start\r\n<i>Hi</i> there\r\n"
    )
    assert parse_vtt(vtt) == [Cue(1.0, 2.5, "Hi there")]
    srt = (
        "1\n00:00:01,000 --> 00:00:02,000\nOne\n\n\n2\n00:00:03,000 --> 00:00:04,000\nTwo\nlines\n"
    )
    assert parse_srt(srt) == [Cue(1.0, 2.0, "One"), Cue(3.0, 4.0, "Two\nlines")]
    with pytest.raises(ValueError):
        parse_vtt("00:00:01.000 --> 00:00:02.000\nno header\n")
    with pytest.raises(ValueError):
        parse_srt("1\nnot a timing\ntext\n")
