"""Export a plan into a repository: check every checkpoint first, build beside, swap at the end.

1. ``inspect`` each checkpoint (exists, of its family, fits memory and disk) before any file is
   written: a wrong choice fails in seconds, not after an hour of exporting the others;
2. each family exports into a staging folder beside the repository, and the committed files of
   the models it exported (configs, python models) are copied there from the templates: a copy
   of polydub's model_repository/, by default the repository itself;
3. only when every family passed are the staged model folders swapped in, one rename each, and
   the manifest (``polydub.manifest``) updated. A failed export leaves the repository serving
   what it served before.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from polydub.errors import ConfigurationError
from polydub.export.cache import ExportCache
from polydub.export.hub import Expected, Inspected, explain, inspect
from polydub.export.plan import Plan, make_plan
from polydub.export.registry import get_family, model_source
from polydub.export.repository import copy_templates, require_configs, require_templates
from polydub.export.spec import RANDOM, Checkpoint, Checkpoints, ExportReport, Preset, Target
from polydub.manifest import MANIFEST_MODEL, Manifest, ServedModel, manifest_path, read_manifest

log = logging.getLogger(__name__)

# What a checkpoint of each served model looks like on disk (``hub.inspect``).
EXPECTED: dict[str, Expected] = {
    "whisper": Expected(model_type="whisper"),
    "nllb": Expected(model_type="m2m_100"),
    "speaker_embedding": Expected(config_file="config.yaml"),
    "pyannote_segmentation": Expected(config_file="config.yaml"),
}
TTS_EXPECTED = Expected(model_type="vits")


@dataclass(frozen=True)
class ExportResult:
    reports: list[ExportReport]
    manifest: Manifest


def expected_layout(model: str) -> Expected | None:
    if model.startswith("mms_tts_"):
        return TTS_EXPECTED
    return EXPECTED.get(model)


def check_plan(plan: Plan) -> tuple[Plan, dict[str, Inspected]]:
    """Inspect every checkpoint that is not random or fixed; the first problem is raised as a
    one-line ConfigurationError. A droppable gated model refused is left out (a warning)."""
    found: dict[str, Inspected] = {}
    families = {family: dict(models) for family, models in plan.families.items()}
    for family, models in plan.families.items():
        for model, checkpoint in models.items():
            layout = expected_layout(model)
            if checkpoint.random or layout is None:
                continue
            try:
                found[model] = inspect(checkpoint, layout)
            except Exception as exc:
                explained = explain(exc, checkpoint)
                if explained is None:
                    raise
                if model in plan.droppable and explained.code == "gated_model_needs_token":
                    log.warning("%s: left out, the export goes on without it", explained.message)
                    del families[family][model]
                    continue
                raise explained from exc
    return replace(plan, families=families), found


def export_all(
    plan: Plan, target: Target, repository: Path, templates: Path | None = None
) -> ExportResult:
    """Export ``plan`` into ``repository``; ``templates``: where the committed configs and
    python models come from (None: the repository itself, a copy of polydub's
    model_repository/)."""
    repository = repository.resolve()
    templates = repository if templates is None else templates.resolve()
    plan, inspected = check_plan(plan)
    cache = ExportCache.from_env()
    require_templates(templates, MANIFEST_MODEL)
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=repository.parent))
    try:
        reports = []
        for family, checkpoints in plan.families.items():
            log.info("exporting %s: %s", family, {m: c.describe() for m, c in checkpoints.items()})
            try:
                report = export_family(family, checkpoints, target, staging, inspected, cache)
            except Exception as exc:
                explained = explain(exc)
                if explained is None:
                    raise
                raise explained from exc
            copy_templates(templates, staging, report.models)
            require_configs(staging, report.models, templates)
            reports.append(report)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        manifest = _manifest(plan, reports, inspected, stamp)
        retired = tuple(m for r in reports for m in r.retired)
        merged = read_manifest(repository).merged(manifest, retired)
        copy_templates(templates, staging, [MANIFEST_MODEL])
        path = manifest_path(staging)
        path.write_text(merged.to_json() + "\n", encoding="utf-8")
        _swap_in(staging, repository, retired)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(reports, merged)


def export_family(
    family: str,
    checkpoints: Checkpoints,
    target: Target,
    out: Path,
    inspected: Mapping[str, Inspected],
    cache: ExportCache | None,
) -> ExportReport:
    """One family's export into ``out``, or a copy of the same export from ``cache``."""
    key = cache.key(family, checkpoints, target, inspected) if cache else None
    if cache and key and (report := cache.load(key, out)):
        return report
    report = get_family(family).export(checkpoints, target, out)
    if cache and key:
        cache.store(key, out, report)
    return report


def _manifest(
    plan: Plan, reports: list[ExportReport], inspected: dict[str, Inspected], stamp: str
) -> Manifest:
    checkpoints = plan.checkpoints()
    models: dict[str, ServedModel] = {}
    for report in reports:
        for model in report.models:
            checkpoint = checkpoints.get(model) or _family_checkpoint(plan, report)
            found = inspected.get(model)
            source = model_source(model)
            parity = {
                graph: value
                for graph, value in {**report.max_abs_diff, **report.int8_max_abs_diff}.items()
                if graph == model or graph.startswith(f"{model}_") or graph.startswith(f"{model}:")
            }
            models[model] = ServedModel(
                name=model,
                family=report.family,
                checkpoint=checkpoint.describe(),
                license=checkpoint.license
                if checkpoint.license != "unknown" or source is None
                else source.license,
                random=checkpoint.random,
                precision=report.precision.get(model, "fp32"),
                revision=found.revision if found else checkpoint.revision,
                content_sha256=found.content_sha256 if found else None,
                parity=parity,
                exported_at=stamp,
            )
    notes = {r.family: tuple(r.notes) for r in reports}
    return Manifest(models, notes)


# Folders whose files accumulate across exports: exporting one voice keeps the others' specs.
ACCUMULATING = ("mms_tts_tokenizer/1/tokenizers",)


def _family_checkpoint(plan: Plan, report: ExportReport) -> Checkpoint:
    """The source of a model that is a part of its family's chosen checkpoint (NLLB's encoder
    and decoder graphs, the MMS tokenizer specs): the family's one checkpoint, or, for several,
    random when all are."""
    chosen = list(plan.families.get(report.family, {}).values())
    if len(chosen) == 1:
        return chosen[0]
    if chosen and all(c.random for c in chosen):
        return Checkpoint(RANDOM, chosen[0].license)
    return Checkpoint(report.checkpoint, chosen[0].license if chosen else "unknown")


def _swap_in(staging: Path, repository: Path, retired: tuple[str, ...]) -> None:
    """Move each staged model folder's entries over the repository's, one rename each; the
    old entries go to a trash folder removed at the end (same filesystem: renames are atomic)."""
    for folder in ACCUMULATING:
        live, staged = repository / folder, staging / folder
        if live.is_dir() and staged.is_dir():
            for item in live.iterdir():
                if item.is_file() and not (staged / item.name).exists():
                    shutil.copy2(item, staged / item.name)
    trash = Path(tempfile.mkdtemp(prefix=f".{repository.name}.old-", dir=repository.parent))
    try:
        for name in retired:
            old = repository / name
            if old.exists():
                old.rename(trash / name)
        for model_dir in sorted(p for p in staging.iterdir() if p.is_dir()):
            target = repository / model_dir.name
            target.mkdir(exist_ok=True)
            for entry in sorted(model_dir.iterdir()):
                dest = target / entry.name
                if dest.exists() or dest.is_symlink():
                    dest.rename(trash / f"{model_dir.name}.{entry.name}")
                entry.rename(dest)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def require_writable(repository: Path) -> None:
    """A clear error before exporting into a folder that cannot be written."""
    parent = repository if repository.exists() else repository.parent
    if not os.access(parent, os.W_OK):
        raise ConfigurationError(
            f"{parent} is not writable: choose another --repository", code="repository_not_writable"
        )


def export_preset(
    preset: Preset,
    target: Target,
    repository: Path,
    families: list[str] | None = None,
    templates: Path | None = None,
) -> ExportResult:
    """A preset's defaults, no choices: what the tests, the benchmarks and the load harness use."""
    return export_all(make_plan(preset, families=families), target, repository, templates)
