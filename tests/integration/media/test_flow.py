"""The media and timing stages end to end on a two-speaker clip, with espeak-ng standing in for
the TTS model: one Spanish voice for everyone (like MMS-TTS), pitch-shifted per speaker."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from polydub.media.extract import extract_mix_wav, extract_model_audio
from polydub.media.mix import (
    Placement,
    assemble,
    mix_to_wav,
    render_segments,
    speech_intervals,
)
from polydub.media.mux import mux, stream_md5
from polydub.media.probe import probe
from polydub.orchestrator.quality import fit_stats, loudness_stats
from polydub.orchestrator.subtitles import make_cues, parse_srt, parse_vtt, to_srt, to_vtt
from polydub.orchestrator.timing import plan_timing
from polydub.orchestrator.voices import SpeakerProfile, Voice, cast_voices, estimate_f0
from tests.media import espeak as tts
from tests.media import make_two_speaker_clip

pytestmark = pytest.mark.integration

SPANISH = [
    "Hola, me llamo Pedro y me gustan mucho los trenes antiguos.",
    "Encantada de conocerte, Pedro. Yo prefiero los barcos.",
    "Los barcos son lentos, pero el mar es precioso.",
    "Exacto, y nadie tiene nunca prisa allí.",
]
SPEED = 165  # espeak words per minute at rate 1.0


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    speaker: str


def test_two_speakers_dubbed_into_one_voice(tmp_path: Path) -> None:
    clip = make_two_speaker_clip(tmp_path / "clip.mp4")
    assert len(clip.turns) == 4 and clip.speakers == {"A", "B"}
    info = probe(clip.path)
    assert info.duration == 15.0 and info.has_video

    # Pitch per speaker, measured on the extracted model audio.
    audio = extract_model_audio(clip.path, media_duration=info.audio_duration)
    assert audio.shape == (15 * 16000,)
    f0 = {}
    for speaker in ("A", "B"):
        voiced = np.concatenate([audio[round(t.start * 16000) : round(t.end * 16000)]
                                 for t in clip.turns if t.speaker == speaker])  # fmt: skip
        f0[speaker] = estimate_f0(voiced, 16000)
    assert f0["A"] is not None and f0["B"] is not None
    assert f0["A"] < 140 < 170 < f0["B"]  # en+m3 is a man's voice, en+f3 a woman's

    # One voice for the language, measured on its own output: both speakers shift from it.
    voice_f0 = estimate_f0(tts(SPANISH[0], "es", sample_rate=16000), 16000)
    assert voice_f0 is not None
    speakers = [SpeakerProfile("A", "male", f0["A"]), SpeakerProfile("B", "female", f0["B"])]
    a, b = cast_voices(speakers, [Voice("es", "male", voice_f0)])
    assert a.voice == b.voice == "es" and b.semitones - a.semitones >= 2.0
    shift = {"A": a.semitones, "B": b.semitones}

    # Timing: synthesize at rate 1.0, choose rates, synthesize again, fit what was measured.
    segments = [Segment(t.start, t.end, text, t.speaker)
                for t, text in zip(clip.turns, SPANISH, strict=True)]  # fmt: skip
    first = [tts(s.text, "es", speed=SPEED, sample_rate=16000) for s in segments]
    natural = [len(x) / 16000 for x in first]
    plan = plan_timing(segments, natural, timeline_end=info.duration)
    speech = [tts(s.text, "es", speed=round(SPEED * t.rate), sample_rate=16000)
              if t.resynthesize else first[i]
              for i, (s, t) in enumerate(zip(segments, plan.segments, strict=True))]  # fmt: skip
    measured = [len(x) / 16000 for x in speech]
    plan = plan_timing(segments, natural, synthesized=measured, timeline_end=info.duration)
    stats = fit_stats(plan.segments)
    assert stats.segments == 4 and stats.overflowed == 0 and stats.max_stretch <= 1.3

    rendered = render_segments(speech, 16000, plan.segments, [shift[s.speaker] for s in segments])
    placements = [Placement(t.start, x) for t, x in zip(plan.segments, rendered, strict=True)]
    original = extract_mix_wav(
        clip.path, tmp_path / "original.wav", media_duration=info.audio_duration
    )
    assert original.frames == 15 * 48000

    # Every dub starts exactly where its original turn starts: no drift.
    track = assemble(placements, original.frames, 48000)
    for turn in clip.turns:
        onset = np.flatnonzero(np.abs(track[round(turn.start * 48000) - 4800 :]) > 1e-3)[0]
        assert abs(onset - 4800) <= 480  # within 10 ms (the voice's own attack)

    mixed = mix_to_wav(original.path, placements, tmp_path / "mix.wav",
                       intervals=speech_intervals(plan.segments))  # fmt: skip
    loud = loudness_stats(mixed.loudness.integrated_lufs, mixed.loudness.true_peak_dbtp,
                          mixed.loudness.lra, target_lufs=-23.0, gain_db=mixed.gain_db,
                          clipped_samples=mixed.clipped_samples,
                          total_samples=mixed.frames * mixed.channels)  # fmt: skip
    assert loud.within_target and loud.clipped_samples == 0
    assert loud.true_peak_dbtp is not None and loud.true_peak_dbtp <= -0.9

    out = mux(clip.path, mixed.path, tmp_path / "dubbed.mp4",
              video_codecs=[v.codec for v in info.video], language="spa")  # fmt: skip
    assert stream_md5(out.path) == stream_md5(clip.path)
    dubbed = probe(out.path)
    assert abs(dubbed.audio_duration - info.audio_duration) <= 0.05

    # Subtitles in both languages parse back, with both speakers in the WebVTT.
    cues = make_cues(segments)
    assert [(c.start, c.end) for c in parse_srt(to_srt(cues))] == [
        (round(c.start, 3), round(c.end, 3)) for c in cues
    ]
    assert {c.speaker for c in parse_vtt(to_vtt(cues))} == {"A", "B"}
    source_cues = make_cues([Segment(t.start, t.end, t.text, t.speaker) for t in clip.turns])
    assert len(parse_vtt(to_vtt(source_cues))) == len(source_cues) >= 4
