"""Checkpoint repositories of polydub's ``small`` preset, each in its Hub repository's own layout.

Every file a loader reads is there, written by the real classes (``save_pretrained``, ``torch.save``,
safetensors) or in the real file's format; weights are random (seeded per repository, so a build is
byte-for-byte repeatable). Scales:

* ``ci``: small dimensions where the real ones make large files (Whisper, NLLB and VITS hidden
  sizes and layers), never Whisper's vocabulary or special ids. NLLB's vocabulary shrinks with its
  tokenizer (polydub's offline sentencepiece: the real 256k model is not available offline), so
  config and tokenizer agree. pyannote's networks are small: built at their real size.
* ``real``: the published dimensions (NLLB is 2.4 GB of float32: count with ``parameter_counts``).

``build_all(root)`` lays the repositories out as ``root/<org>/<name>/``, what ``server.serve``
expects; each repository directory is also a valid local checkpoint directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Scale = Literal["ci", "real"]

WHISPER = "openai/whisper-base"
NLLB = "facebook/nllb-200-distilled-600M"
MMS_LANGUAGES = ("spa", "fra", "deu", "eng")
MMS_PREFIX = "facebook/mms-tts-"
EMBEDDING = "pyannote/wespeaker-voxceleb-resnet34-LM"
SEGMENTATION = "pyannote/segmentation-3.0"
# Not a ``small``-preset model: an HT-Demucs checkpoint as demucs publishes them, one ``.th``
# file at the repository's root (``--model separation=HUB_ID``).
HTDEMUCS = "polydub-test/htdemucs-tiny"
HTDEMUCS_FILE = "htdemucs-tiny.th"
HTDEMUCS_SECONDS = 0.5  # its training segment: short, so that exporting it is quick
REPOS: tuple[str, ...] = (
    WHISPER,
    NLLB,
    *(MMS_PREFIX + language for language in MMS_LANGUAGES),
    EMBEDDING,
    SEGMENTATION,
    HTDEMUCS,
)
GATED = frozenset({SEGMENTATION})  # gated on the real Hub: files need an accepted token

# The Hub's default .gitattributes: these suffixes are LFS objects (the server reports them so).
LFS_SUFFIXES = (".bin", ".safetensors", ".model", ".pt", ".ckpt", ".onnx", ".msgpack", ".h5")
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
)


@dataclass(frozen=True)
class ModelCard:
    """The README front matter the Hub turns into ``cardData`` and tags."""

    license: str
    tags: tuple[str, ...]
    pipeline_tag: str | None = None
    library_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def front_matter(self) -> dict[str, Any]:
        data: dict[str, Any] = {"license": self.license, "tags": list(self.tags), **self.extra}
        if self.pipeline_tag:
            data["pipeline_tag"] = self.pipeline_tag
        if self.library_name:
            data["library_name"] = self.library_name
        return data


Builder = Callable[[Path, Scale, str], ModelCard]


def _builder(repo_id: str) -> Builder:
    from tests.hub import pyannote_repos, transformers_repos

    if repo_id.startswith(MMS_PREFIX):
        return transformers_repos.build_mms_tts
    builders: dict[str, Builder] = {
        WHISPER: transformers_repos.build_whisper,
        NLLB: transformers_repos.build_nllb,
        EMBEDDING: pyannote_repos.build_embedding,
        SEGMENTATION: pyannote_repos.build_segmentation,
        HTDEMUCS: build_htdemucs,
    }
    try:
        return builders[repo_id]
    except KeyError:
        raise KeyError(f"no fake-hub builder for {repo_id!r}; known: {', '.join(REPOS)}") from None


def build_htdemucs(out_dir: Path, scale: Scale, repo_id: str) -> ModelCard:
    """The tiny HT-Demucs of ``polydub.export.htdemucs`` (4 channels) at either scale: the
    real one's weights are 168 MB and its architecture is tested elsewhere."""
    from polydub.export.htdemucs import tiny_checkpoint

    tiny_checkpoint(out_dir / HTDEMUCS_FILE, seconds=HTDEMUCS_SECONDS)
    return ModelCard(license="mit", tags=("demucs", "audio-source-separation"))


def build_repo(repo_id: str, out_dir: Path, scale: Scale = "ci") -> Path:
    """Write ``repo_id``'s files into ``out_dir`` (the repository's root); returns ``out_dir``."""
    builder = _builder(repo_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = builder(out_dir, scale, repo_id)
    write_readme(out_dir, repo_id, card)
    (out_dir / ".gitattributes").write_text(GITATTRIBUTES, encoding="utf-8")
    return out_dir


def build_all(root: Path, scale: Scale = "ci", repos: tuple[str, ...] = REPOS) -> dict[str, Path]:
    """Every repository under ``root/<org>/<name>``; repository id -> its directory."""
    return {repo_id: build_repo(repo_id, root / repo_id, scale) for repo_id in repos}


def write_readme(out_dir: Path, repo_id: str, card: ModelCard) -> None:
    import yaml

    front = yaml.safe_dump(card.front_matter(), sort_keys=False, allow_unicode=True)
    body = f"# {repo_id}\n\nRandom weights in the real file layout, for tests (polydub fake hub).\n"
    (out_dir / "README.md").write_text(f"---\n{front}---\n\n{body}", encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    """JSON as transformers writes it: two-space indent, sorted keys, trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def repo_sizes(root: Path) -> dict[str, int]:
    """Bytes on disk per repository under ``root``."""
    return {
        repo_id: sum(p.stat().st_size for p in (root / repo_id).rglob("*") if p.is_file())
        for repo_id in REPOS
        if (root / repo_id).is_dir()
    }


def parameter_counts(scale: Scale = "real") -> dict[str, int]:
    """Parameters of each repository's model at ``scale``, built on torch's meta device (no
    memory, no weights written): the figures to compare with the published model sizes."""
    import torch

    from tests.hub import pyannote_repos, transformers_repos

    counts: dict[str, int] = {}
    with torch.device("meta"):
        for repo_id in REPOS:
            if repo_id == HTDEMUCS:
                continue  # the tiny network at every scale: no published count to match
            if repo_id in (EMBEDDING, SEGMENTATION):
                model = pyannote_repos.model(repo_id)
            else:
                model = transformers_repos.model(repo_id, scale)
            counts[repo_id] = sum(p.numel() for p in model.parameters())
    return counts
