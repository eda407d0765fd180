import math

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.orchestrator.voices import (
    SpeakerProfile,
    Voice,
    VoicePolicy,
    cast_voices,
    estimate_f0,
    semitones_between,
    separate,
)

pytestmark = pytest.mark.unit

MMS = [Voice("mms_tts_spa", "male", 130.0)]


def st(f_from: float, f_to: float) -> float:
    return round(12 * math.log2(f_to / f_from), 2)


def test_one_voice_two_speakers_of_different_gender() -> None:
    speakers = [SpeakerProfile("A", "male", 110.0), SpeakerProfile("B", "female", 220.0)]
    a, b = cast_voices(speakers, MMS)
    assert (a.voice, b.voice) == ("mms_tts_spa", "mms_tts_spa") and a.shared and b.shared
    assert a.semitones == st(130, 110) == -2.89  # toward his measured pitch
    assert b.semitones == 6.0  # 9.1 semitones wanted, bounded to +6
    assert a.f0 == 110.0 and b.f0 == round(130 * 2**0.5, 1)
    assert a.separated and b.separated


def test_single_speaker_on_the_only_voice_is_still_shifted_toward_his_pitch() -> None:
    (a,) = cast_voices([SpeakerProfile("A", "male", 120.0)], MMS)
    assert a.semitones == st(130, 120) and not a.shared


def test_two_similar_men_are_pushed_apart_symmetrically() -> None:
    speakers = [SpeakerProfile("A", "male", 130.0), SpeakerProfile("B", "male", 130.0)]
    a, b = cast_voices(speakers, MMS)
    assert (a.semitones, b.semitones) == (-1.0, 1.0)  # 2 semitones apart, centred on 0


def test_target_is_clamped_into_the_gender_range_first() -> None:
    # A 'female' speaker measured at 120 Hz (a bad F0 track) still gets a female-plausible pitch.
    (b,) = cast_voices([SpeakerProfile("B", "female", 120.0)], [Voice("v", "female", 210.0)])
    assert b.semitones == st(210, 155) and b.f0 == 155.0


def test_unknown_pitch_uses_the_typical_pitch_of_the_gender() -> None:
    (a,) = cast_voices([SpeakerProfile("A", "female", None)], MMS)
    assert a.semitones == 6.0  # 210 Hz wanted from 130 Hz: +8.3, bounded
    (u,) = cast_voices([SpeakerProfile("U", "unknown", None)], MMS)
    assert u.semitones == 0.0


def test_several_voices_distinct_and_gender_matched_by_pitch() -> None:
    voices = [Voice("m_low", "male", 100.0), Voice("f", "female", 200.0),
              Voice("m_high", "male", 140.0)]  # fmt: skip
    speakers = [SpeakerProfile("A", "male", 135.0), SpeakerProfile("B", "female", 230.0),
                SpeakerProfile("C", "male", 135.0)]  # fmt: skip
    a, b, c = cast_voices(speakers, voices)
    assert (a.voice, b.voice, c.voice) == ("m_high", "f", "m_low")
    assert (a.semitones, b.semitones, c.semitones) == (0.0, 0.0, 0.0)
    assert not any(x.shared for x in (a, b, c))


def test_gender_beats_distinctness_and_shared_voices_are_separated() -> None:
    voices = [Voice("m", "male", 120.0), Voice("f", "female", 210.0)]
    speakers = [SpeakerProfile("A", "male", 120.0), SpeakerProfile("B", "male", 120.0),
                SpeakerProfile("C", "female", 210.0)]  # fmt: skip
    a, b, c = cast_voices(speakers, voices)
    assert (a.voice, b.voice, c.voice) == ("m", "m", "f")
    assert (a.semitones, b.semitones) == (-1.0, 1.0) and a.shared and b.shared
    assert c.semitones == 0.0 and not c.shared


def test_separation_respects_order_and_bounds() -> None:
    assert separate([0.0, 0.0], 2.0, 6.0) == ([-1.0, 1.0], True)
    assert separate([5.0, 5.5, 6.0], 2.0, 6.0) == ([2.0, 4.0, 6.0], True)
    assert separate([3.0, -3.0], 2.0, 6.0) == ([3.0, -3.0], True)  # already apart: untouched
    assert separate([1.0, 0.0, 0.5], 2.0, 6.0) == ([2.5, -1.5, 0.5], True)
    values, ok = separate([0.0] * 8, 2.0, 6.0)  # 14 semitones needed, 12 available
    assert not ok and max(values) == 6.0 and min(values) == -6.0


def test_custom_policy_and_errors() -> None:
    policy = VoicePolicy(max_shift=3.0, min_separation=4.0)
    a, b = cast_voices([SpeakerProfile("A", "male", 130.0), SpeakerProfile("B", "male", 130.0)],
                         MMS, policy)  # fmt: skip
    assert (a.semitones, b.semitones) == (-2.0, 2.0)
    with pytest.raises(ValueError):
        cast_voices([SpeakerProfile("A", "male", 1.0)], [])
    with pytest.raises(ValueError):
        cast_voices([SpeakerProfile("A", "male", 1.0)] * 2, MMS)
    assert semitones_between(100.0, 200.0) == 12.0


def _harmonic(f0: float, seconds: float = 1.0, rate: int = 16000) -> NDArray[np.float32]:
    t = np.arange(round(seconds * rate)) / rate
    return np.asarray(sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)), np.float32)


@pytest.mark.parametrize("f0", [85.0, 120.0, 150.0, 210.0, 320.0])
def test_estimate_f0_of_harmonic_tones(f0: float) -> None:
    assert estimate_f0(_harmonic(f0), 16000) == pytest.approx(f0, rel=0.005)


def test_estimate_f0_ignores_silence_and_needs_voiced_frames() -> None:
    signal = np.concatenate([np.zeros(16000, np.float32), _harmonic(150.0, 0.5)])
    assert estimate_f0(signal, 16000) == pytest.approx(150.0, rel=0.005)
    assert estimate_f0(np.zeros(16000, np.float32), 16000) is None
    assert estimate_f0(np.zeros(100, np.float32), 16000) is None
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert estimate_f0(noise, 16000) is None
