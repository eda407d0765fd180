"""Quality gates: pure checks over the figures the stages put in the quality report.

A *warning* leaves the language's status alone and tells the user what to look at (a code for
programs, a message for people); the stage that measured the figure returns it, the runner keeps
it with the job (job-scope stages) or the target language, and the quality report lists them all.

A *failure* is a language with speech to dub and nothing dubbed: every transcribed segment
translated to empty text, or no second of speech synthesized. The stage that finds it raises, so
that language fails alone with the reason, and a retry redoes that stage rather than reusing its
empty result. Silence is no failure: with no speech transcribed, the dub is the original audio
and the report says so (warning ``no_speech``).

Figures are the stages' metrics dicts (``quality.py`` and the stages); a metric missing from an
older record counts as "unknown" and raises nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from polydub.errors import PermanentError
from polydub.settings import Settings

Figures = Mapping[str, Any]
SILENCE_LUFS = -70.0  # the BS.1770 absolute gate: at or below it there is nothing to normalise


@dataclass(frozen=True)
class QualityIssue:
    code: str  # stable, for programs
    message: str  # for people
    stage: str  # whose figures raised it

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "stage": self.stage}


@dataclass(frozen=True)
class GateThresholds:
    min_language_probability: float = 0.5  # of an auto-detected source language
    min_avg_logprob: float = -1.0  # Whisper's own log_prob_threshold for a failed decode
    max_truncated_ratio: float = 0.25  # share of segments cut with a fade-out

    @classmethod
    def from_settings(cls, settings: Settings) -> GateThresholds:
        return cls(
            min_language_probability=settings.quality_min_language_probability,
            min_avg_logprob=settings.quality_min_avg_logprob,
            max_truncated_ratio=settings.quality_max_truncated_ratio,
        )


def _spoken(figures: Figures) -> int | None:
    """Segments with words in them; older records only count segments."""
    value = figures.get("spoken_segments", figures.get("segments"))
    return None if value is None else int(value)


def _transcribe(figures: Figures, limits: GateThresholds) -> list[QualityIssue]:
    spoken = _spoken(figures)
    if spoken == 0:
        return [
            QualityIssue(
                "no_speech",
                "no speech was found in the input: the dubbed audio is the original audio and "
                "the subtitles are empty",
                "transcribe",
            )
        ]
    issues = []
    probability = figures.get("language_probability")
    if (
        figures.get("language_detected")
        and probability is not None
        and probability < limits.min_language_probability
    ):
        issues.append(
            QualityIssue(
                "low_language_probability",
                f"the spoken language was detected as {figures.get('language')!r} with "
                f"probability {probability:.2f} (below {limits.min_language_probability:.2f}); "
                "if that is wrong, retry with source_language set",
                "transcribe",
            )
        )
    logprob = figures.get("avg_logprob")
    if logprob is not None and logprob < limits.min_avg_logprob:
        issues.append(
            QualityIssue(
                "low_transcription_confidence",
                f"speech recognition was unsure of the words (mean log-probability {logprob:.2f},"
                f" below {limits.min_avg_logprob:.2f}): expect transcription errors",
                "transcribe",
            )
        )
    return issues


def _translate(figures: Figures, limits: GateThresholds) -> list[QualityIssue]:
    spoken, empty = _spoken(figures), int(figures.get("empty_translations", 0))
    if spoken and 0 < empty < spoken:
        return [
            QualityIssue(
                "empty_translations",
                f"{empty} of {spoken} transcribed segments translated to empty text: they are "
                "silent in the dub and missing from the subtitles",
                "translate",
            )
        ]
    return []


def _synthesize(figures: Figures, limits: GateThresholds) -> list[QualityIssue]:
    issues = []
    spoken, silent = int(figures.get("spoken_segments", 0)), int(figures.get("silent_segments", 0))
    if 0 < silent < spoken:
        issues.append(
            QualityIssue(
                "unspoken_segments",
                f"speech synthesis produced no audio for {silent} of {spoken} segments",
                "synthesize",
            )
        )
    segments, truncated = int(figures.get("segments", 0)), int(figures.get("overflowed", 0))
    if segments and truncated / segments > limits.max_truncated_ratio:
        issues.append(
            QualityIssue(
                "speech_truncated",
                f"{truncated} of {segments} dubbed segments were too long for their time slot "
                f"and were cut with a fade-out ({float(figures.get('overflow_seconds', 0.0)):.1f}"
                " s cut in all)",
                "synthesize",
            )
        )
    return issues


def _mix(figures: Figures, limits: GateThresholds) -> list[QualityIssue]:
    lufs = figures.get("integrated_lufs")
    if figures.get("within_target") is False and lufs is not None and lufs > SILENCE_LUFS:
        return [
            QualityIssue(
                "loudness_off_target",
                f"the dubbed audio measures {lufs:.1f} LUFS, more than 1 LU from the target "
                f"{figures.get('target_lufs')} LUFS (true-peak limit)",
                "mix",
            )
        ]
    return []


def _separate(figures: Figures, limits: GateThresholds) -> list[QualityIssue]:
    issues = []
    if figures.get("fallback"):
        issues.append(
            QualityIssue(
                "separation_fallback",
                f"the background was not separated ({figures['fallback']}): the original voices "
                "are ducked under the dub instead",
                "separate",
            )
        )
    factor = figures.get("realtime_factor")
    if factor is not None and factor > 1.0:  # slower than real time: likely the slowest stage
        issues.append(
            QualityIssue(
                "separation_slow",
                f"separating the background took {factor:.2f}x the audio's duration",
                "separate",
            )
        )
    return issues


_WARNINGS: dict[str, Callable[[Figures, GateThresholds], list[QualityIssue]]] = {
    "transcribe": _transcribe,
    "translate": _translate,
    "synthesize": _synthesize,
    "separate": _separate,
    "mix": _mix,
}


def stage_warnings(stage: str, figures: Figures, limits: GateThresholds) -> list[QualityIssue]:
    """The warnings one stage's figures raise (none for a stage skipped or without checks)."""
    check = _WARNINGS.get(stage)
    if check is None or figures.get("skipped"):
        return []
    return check(figures, limits)


def report_warnings(stages: Mapping[str, Figures], limits: GateThresholds) -> list[QualityIssue]:
    """Every warning of a quality report's ``stages`` (stage name -> figures), in stage order."""
    return [w for name, figures in stages.items() for w in stage_warnings(name, figures, limits)]


def no_speech(stages: Mapping[str, Figures]) -> bool:
    """The input had no words to dub (silence, music, noise): an ordinary success."""
    transcribe = stages.get("transcribe")
    return transcribe is not None and _spoken(transcribe) == 0


def gate_failure(stage: str, figures: Figures) -> QualityIssue | None:
    """Nothing dubbed although there was speech: the language must fail, with this reason."""
    if figures.get("skipped"):
        return None
    if stage == "translate":
        spoken, empty = _spoken(figures) or 0, int(figures.get("empty_translations", 0))
        if spoken and empty >= spoken:
            return QualityIssue(
                "nothing_translated",
                f"every one of the {spoken} transcribed segments translated to empty text: "
                "there is nothing to dub or subtitle",
                stage,
            )
    if stage == "synthesize":
        spoken = int(figures.get("spoken_segments", 0))
        silent = int(figures.get("silent_segments", 0))
        if spoken and (float(figures.get("dubbed_seconds", 0.0)) <= 0.0 or silent >= spoken):
            return QualityIssue(
                "nothing_synthesized",
                f"speech synthesis produced no audio for any of the {spoken} translated "
                "segments: there is nothing to dub",
                stage,
            )
    return None


def enforce(stage: str, figures: Figures, *, random_weights: bool = False) -> list[QualityIssue]:
    """Raise the gate's failure, if any: a permanent error fails this language alone.

    A model served with random weights (the ``tiny`` preset, or ``auto`` offline) is expected to
    produce nothing worth dubbing: its failure becomes a warning, so smoke runs still finish and
    say why the dub is empty."""
    failure = gate_failure(stage, figures)
    if failure is None:
        return []
    if random_weights:
        return [
            QualityIssue(
                failure.code,
                f"{failure.message} (the model has random weights: expected)",
                failure.stage,
            )
        ]
    raise PermanentError(failure.message, code=failure.code, detail=dict(figures))
