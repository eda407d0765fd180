"""Export every requested family into one repository and summarise what was written."""

from __future__ import annotations

from pathlib import Path

from polydub.export.hub import resolve_preset
from polydub.export.registry import FAMILIES, get_family
from polydub.export.spec import ExportReport, Preset, Target


def export_all(
    preset: Preset, target: Target, repository: Path, families: list[str] | None = None
) -> list[ExportReport]:
    resolved = resolve_preset(preset)
    repository.mkdir(parents=True, exist_ok=True)
    return [
        get_family(name).export(resolved, target, repository) for name in families or list(FAMILIES)
    ]
