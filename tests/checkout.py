"""This checkout's ``model_repository/``: the templates (committed configs and python models) the
tests' exports into temporary repositories copy (``polydub.export.run.export_all(templates=)``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from polydub.export.repository import copy_templates

TEMPLATES = Path(__file__).resolve().parents[1] / "model_repository"


def place_templates(repository: Path, models: Iterable[str]) -> None:
    """What ``export_all`` does after a family's export, for tests that run one exporter."""
    copy_templates(TEMPLATES, repository, models)


def seed_templates(repository: Path) -> None:
    """A repository as a fresh clone has it: every model's configs and python models, no weights."""
    copy_templates(TEMPLATES, repository, [p.name for p in TEMPLATES.iterdir() if p.is_dir()])
