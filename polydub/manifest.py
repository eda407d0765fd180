"""What a model repository serves: per Triton model, its checkpoint, license, precision, parity.

``polydub models export`` writes ``<repository>/polydub_manifest/1/manifest.json``; the committed
``polydub_manifest`` python model serves it through Triton, so the API (``/languages``), the
worker (each job's quality report) and ``polydub models list`` all name the models that really
served, wherever the repository lives (a folder here, s3:// in a cluster). Import-light: no torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

MANIFEST_MODEL = "polydub_manifest"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ServedModel:
    """One Triton model and where its weights come from."""

    name: str
    family: str
    checkpoint: str  # hub id, local directory, or a description ("random weights (tiny)")
    license: str
    random: bool  # random weights: the output is noise (the tiny preset)
    precision: str = "fp32"  # what the CPU profile runs: int8 | int8 vocoder | fp32 (GPU: fp16)
    revision: str | None = None  # the Hub commit the checkpoint resolved to
    content_sha256: str | None = None  # a local checkpoint's files, hashed
    parity: Mapping[str, float] = field(default_factory=dict)  # graph -> max |Δ| vs PyTorch
    exported_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["parity"] = dict(self.parity)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServedModel:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Manifest:
    models: Mapping[str, ServedModel] = field(default_factory=dict)
    notes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # family -> export notes

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "models": {name: m.to_dict() for name, m in sorted(self.models.items())},
                "notes": {family: list(n) for family, n in sorted(self.notes.items())},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        return cls(
            models={n: ServedModel.from_dict(m) for n, m in data.get("models", {}).items()},
            notes={f: tuple(n) for f, n in data.get("notes", {}).items()},
        )

    def merged(self, newer: Manifest, retired: tuple[str, ...] = ()) -> Manifest:
        """This manifest updated by a later export of some families."""
        models = {n: m for n, m in self.models.items() if n not in retired}
        models.update(newer.models)
        notes = dict(self.notes)
        notes.update(newer.notes)
        return Manifest(models, notes)

    def random_families(self) -> list[str]:
        return sorted({m.family for m in self.models.values() if m.random})

    def summary(self, names: list[str] | None = None) -> dict[str, Any]:
        """What a quality report or an API answer shows: per model its source, and which
        families run on random weights."""
        chosen = [m for n, m in sorted(self.models.items()) if names is None or n in names]
        return {
            "models": {
                m.name: {
                    "family": m.family,
                    "checkpoint": m.checkpoint,
                    "revision": m.revision or m.content_sha256,
                    "license": m.license,
                    "precision": m.precision,
                    "random_weights": m.random,
                }
                for m in chosen
            },
            "random_weights": sorted({m.family for m in chosen if m.random}),
        }


def manifest_path(repository: Path) -> Path:
    return repository / MANIFEST_MODEL / "1" / MANIFEST_FILE


def read_manifest(repository: Path) -> Manifest:
    """The repository's manifest; empty when nothing was exported with one."""
    path = manifest_path(repository)
    if not path.is_file():
        return Manifest()
    return Manifest.from_json(path.read_text(encoding="utf-8"))


class Infer(Protocol):
    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], outputs: list[str]
    ) -> dict[str, NDArray[Any]]: ...


async def fetch_manifest(client: Infer) -> Manifest:
    """The served repository's manifest, through Triton; empty when the repository has none
    (exported before manifests existed). When Triton cannot answer now (restarting,
    overloaded), its retryable error is raised: an empty manifest would read as "every model
    has real weights" and turn the random-weights warnings into failed languages."""
    from polydub.errors import classify

    try:
        result = await client.infer(
            MANIFEST_MODEL, {"format": np.array([b"json"], dtype=np.object_)}, ["manifest"]
        )
    except Exception as exc:
        error = classify(exc)
        if error.retryable:
            raise error from exc
        log.warning("no model manifest from Triton: %s", error.message)
        return Manifest()
    try:
        raw = result["manifest"].reshape(-1)[0]
        return Manifest.from_json(raw if isinstance(raw, bytes | str) else bytes(raw))
    except Exception as exc:  # the repository's content is wrong: retrying won't help
        log.warning("unreadable model manifest from Triton: %s", exc)
        return Manifest()
