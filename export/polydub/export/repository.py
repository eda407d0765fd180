"""Lay exported files out as a Triton model repository.

Templates: each model's committed ``config.pbtxt`` (CPU profile, loads unchanged in the official
container), ``configs/gpu.pbtxt`` (selected with ``--model-config-name=gpu``) and python models
(``1/model.py``), as in polydub's ``model_repository/``; the export copies them into the
repository it writes (``polydub.export.run``). Generated: ``<model>/1/`` graphs and tokenizers.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from polydub.errors import ConfigurationError

CONFIG = "config.pbtxt"
# What a model's templates are, relative to its folder: its configs (one per profile) and its
# python model. Everything else in a repository (graphs, tokenizers, the manifest) is written by
# the export, and must not come back from a repository that serves as its own templates.
TEMPLATE_PATTERNS = (CONFIG, "configs/*.pbtxt", "[0-9]*/*.py")


def version_dir(repository: Path, model: str, version: int = 1) -> Path:
    path = repository / model / str(version)
    path.mkdir(parents=True, exist_ok=True)
    return path


def template_files(templates: Path, model: str) -> list[Path]:
    """The committed files of one model in ``templates`` (``TEMPLATE_PATTERNS``; none when it
    has no folder there)."""
    folder = templates / model
    found = {item for pattern in TEMPLATE_PATTERNS for item in folder.glob(pattern)}
    return sorted(item for item in found if item.is_file())


def copy_templates(templates: Path, repository: Path, models: Iterable[str]) -> None:
    """Copy the committed files of ``models`` from ``templates`` into ``repository``, over what
    is there (a committed config wins over one an exporter rendered)."""
    if repository.resolve() == templates.resolve():
        return
    for model in models:
        for item in template_files(templates, model):
            dst = repository / model / item.relative_to(templates / model)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dst)


def require_templates(templates: Path, marker: str) -> None:
    """A clear error, before anything is exported, when ``templates`` is no copy of polydub's
    model_repository/ (``marker``: a model every export places)."""
    if not (templates / marker / CONFIG).is_file():
        raise ConfigurationError(
            f"{templates} holds no Triton configs ({marker}/{CONFIG} is missing): export into "
            "a copy of polydub's model_repository/, or name one with --templates",
            code="model_templates_missing",
        )


def require_configs(repository: Path, models: Iterable[str], templates: Path) -> None:
    """Every exported model needs its config; one without is an error naming the fix."""
    missing = [m for m in models if not (repository / m / CONFIG).is_file()]
    if missing:
        raise ConfigurationError(
            f"no {CONFIG} for {', '.join(missing)} in the templates {templates}: add the "
            "models' configs there (polydub's model_repository/ has them) or name other "
            "templates with --templates",
            code="model_config_missing",
        )
