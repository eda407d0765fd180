from typing import Any

import pytest

from polydub.errors import PermanentError
from polydub.orchestrator.gates import (
    GateThresholds,
    QualityIssue,
    enforce,
    gate_failure,
    no_speech,
    report_warnings,
    stage_warnings,
)
from polydub.orchestrator.inference.translation import TranslationCandidate
from polydub.orchestrator.quality import fit_stats, translation_stats
from polydub.orchestrator.stages.dub import choose_candidate
from polydub.settings import Settings

pytestmark = pytest.mark.unit

LIMITS = GateThresholds()


def transcribe(**figures: Any) -> dict[str, Any]:
    base = {
        "language": "eng",
        "language_probability": 0.97,
        "language_detected": True,
        "segments": 4,
        "spoken_segments": 4,
        "speech_seconds": 9.5,
        "avg_logprob": -0.3,
        "no_speech_ratio": 0.0,
    }
    return {**base, **figures}


def synthesize(spoken: int, silent: int, dubbed_seconds: float, **figures: Any) -> dict[str, Any]:
    return {
        **fit_stats([]).to_dict(),
        "segments": spoken,
        "spoken_segments": spoken,
        "silent_segments": silent,
        "dubbed_seconds": dubbed_seconds,
        **figures,
    }


def codes(issues: list[QualityIssue]) -> list[str]:
    return [i.code for i in issues]


def test_clean_figures_raise_nothing() -> None:
    stages = {
        "transcribe": transcribe(),
        "translate": translation_stats(["Hello there.", "Yes"], ["Hola.", "Sí"]).to_dict(),
        "synthesize": synthesize(2, 0, 3.1),
        "mix": {"integrated_lufs": -23.2, "within_target": True, "target_lufs": -23.0},
    }
    assert report_warnings(stages, LIMITS) == []
    assert all(gate_failure(name, figures) is None for name, figures in stages.items())
    assert not no_speech(stages)


def test_every_translation_empty_fails_the_language() -> None:
    figures = translation_stats(["Hello.", "How are you?", "  "], ["", " ", ""]).to_dict()
    assert (figures["spoken_segments"], figures["empty_translations"]) == (2, 2)
    failure = gate_failure("translate", figures)
    assert failure is not None and failure.code == "nothing_translated"
    assert "2 transcribed segments" in failure.message
    with pytest.raises(PermanentError) as raised:
        enforce("translate", figures)
    assert raised.value.code == "nothing_translated" and not raised.value.retryable
    assert raised.value.detail == figures  # the figures travel with the target's error
    # Random weights (tiny, or auto offline): the same figures are expected noise, a warning.
    [warning] = enforce("translate", figures, random_weights=True)
    assert warning.code == "nothing_translated" and "random weights" in warning.message
    assert enforce("translate", {**figures, "empty_translations": 0}, random_weights=True) == []


def test_some_translations_empty_is_a_warning() -> None:
    figures = translation_stats(["Hello.", "How are you?", "Fine."], ["Hola.", "", "Bien."])
    assert gate_failure("translate", figures.to_dict()) is None
    [issue] = stage_warnings("translate", figures.to_dict(), LIMITS)
    assert (issue.code, issue.stage) == ("empty_translations", "translate")
    assert issue.message.startswith("1 of 3 transcribed segments")


def test_no_speech_synthesized_fails_only_when_there_was_text() -> None:
    failure = gate_failure("synthesize", synthesize(3, 3, 0.0))
    assert failure is not None and failure.code == "nothing_synthesized"
    # Text, but every placed second rounds to nothing: still nothing dubbed.
    assert gate_failure("synthesize", synthesize(3, 0, 0.0)) is not None
    assert gate_failure("synthesize", synthesize(0, 0, 0.0)) is None  # silence: nothing to say
    assert gate_failure("synthesize", {"skipped": True}) is None  # subtitles only
    assert codes(stage_warnings("synthesize", synthesize(3, 1, 2.0), LIMITS)) == [
        "unspoken_segments"
    ]


def test_silence_is_a_success_that_says_no_speech() -> None:
    stages = {
        "transcribe": transcribe(
            segments=0,
            spoken_segments=0,
            speech_seconds=0.0,
            avg_logprob=None,
            language_probability=0.0,
        ),
        "translate": translation_stats([], []).to_dict(),
        "synthesize": synthesize(0, 0, 0.0),
        "mix": {"integrated_lufs": -120.0, "within_target": False, "target_lufs": -23.0},
    }
    assert no_speech(stages)
    assert all(gate_failure(name, figures) is None for name, figures in stages.items())
    # One warning, no_speech: neither the low probability nor the loudness of silence count.
    assert codes(report_warnings(stages, LIMITS)) == ["no_speech"]
    # Segments whose words all came out empty are silence as well.
    assert no_speech({"transcribe": transcribe(segments=3, spoken_segments=0)})


def test_language_probability_floor_applies_to_detected_languages_only() -> None:
    low = transcribe(language_probability=0.31, language="por")
    [issue] = stage_warnings("transcribe", low, LIMITS)
    assert issue.code == "low_language_probability" and "'por'" in issue.message
    assert "0.31" in issue.message
    assert stage_warnings("transcribe", {**low, "language_detected": False}, LIMITS) == []
    assert stage_warnings("transcribe", low, GateThresholds(min_language_probability=0.3)) == []


def test_low_transcription_confidence_and_truncation() -> None:
    assert codes(stage_warnings("transcribe", transcribe(avg_logprob=-1.4), LIMITS)) == [
        "low_transcription_confidence"
    ]
    cut = synthesize(4, 0, 6.0, overflowed=2, overflow_seconds=1.25)
    [issue] = stage_warnings("synthesize", cut, LIMITS)
    assert issue.code == "speech_truncated" and "2 of 4" in issue.message
    assert "1.2 s" in issue.message or "1.3 s" in issue.message
    assert stage_warnings("synthesize", {**cut, "overflowed": 1}, LIMITS) == []  # 25 %: allowed


def test_loudness_off_target_is_a_warning() -> None:
    quiet = {"integrated_lufs": -27.5, "within_target": False, "target_lufs": -23.0}
    assert codes(stage_warnings("mix", quiet, LIMITS)) == ["loudness_off_target"]


def test_older_records_without_the_new_figures_raise_nothing() -> None:
    old_translate = {"segments": 2, "empty_translations": 0, "length_ratio": 1.0}
    assert gate_failure("translate", old_translate) is None
    assert stage_warnings("translate", old_translate, LIMITS) == []
    old_synth = {k: v for k, v in synthesize(2, 0, 0.0).items() if "_segments" not in k}
    assert gate_failure("synthesize", old_synth) is None
    assert stage_warnings("diarize", {"segments": 0}, LIMITS) == []  # no checks for it


def test_thresholds_come_from_settings() -> None:
    settings = Settings(
        quality_min_language_probability=0.8,
        quality_min_avg_logprob=-0.5,
        quality_max_truncated_ratio=0.1,
    )
    assert GateThresholds.from_settings(settings) == GateThresholds(0.8, -0.5, 0.1)
    assert GateThresholds.from_settings(Settings()) == GateThresholds()
    issue = QualityIssue("no_speech", "m", "transcribe")
    assert issue.to_dict() == {"code": "no_speech", "message": "m", "stage": "transcribe"}


def test_an_empty_best_candidate_loses_to_any_worded_one() -> None:
    # What the tiny NLLB often answers: </s> first, words further down the n-best.
    candidates = [
        TranslationCandidate("", -0.15),
        TranslationCandidate("", -0.6),
        TranslationCandidate("Hola, ¿qué tal?", -0.9),
        TranslationCandidate("Hola.", -1.0),
    ]
    assert choose_candidate(candidates, 0.4) == 3  # the worded ones compete on fit as usual
    assert choose_candidate(candidates, 1.0) == 2
    assert choose_candidate(candidates[:2], 1.0) == 0  # nothing worded: empty it is
    worded_first = [TranslationCandidate("Hola.", -0.2), TranslationCandidate("", -0.1)]
    assert choose_candidate(worded_first, 0.5) == 0
