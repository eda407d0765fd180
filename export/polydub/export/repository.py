"""Lay exported files out as a Triton model repository.

Committed: ``model_repository/<model>/config.pbtxt`` (CPU profile, loads unchanged in the official
container), ``configs/gpu.pbtxt`` (selected with ``--model-config-name=gpu``) and the python
models (BLS decoding loops). Generated and git-ignored: ``<model>/1/model.onnx`` and tokenizers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# The committed repository in the source tree (export/ is a top-level folder beside it).
SOURCE_REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
GENERATED_SUFFIXES = {".onnx", ".data", ".plan"}


def version_dir(repository: Path, model: str, version: int = 1) -> Path:
    path = repository / model / str(version)
    path.mkdir(parents=True, exist_ok=True)
    return path


def copy_committed(repository: Path, models: list[str], source: Path = SOURCE_REPOSITORY) -> None:
    """Copy the committed configs and python models of ``models`` into another repository.

    Exports into the source repository itself need nothing copied.
    """
    if repository.resolve() == source.resolve():
        return
    for model in models:
        src = source / model
        if not src.is_dir():
            raise FileNotFoundError(f"no committed config for model {model!r} under {source}")
        for item in src.rglob("*"):
            if item.is_dir() or item.suffix in GENERATED_SUFFIXES or "__pycache__" in item.parts:
                continue
            dst = repository / model / item.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dst)
