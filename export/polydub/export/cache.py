"""Finished family exports kept on disk, so exporting the same checkpoint again is a copy.

Opt-in (``POLYDUB_EXPORT_CACHE=DIR``): an export of real weights takes minutes and its files
are as large as the checkpoint, so the cache is for those who re-export the same weights often
(CI, a developer switching repositories), not a default that doubles the disk used.

An entry is keyed by everything its bytes depend on: the family, the target, each checkpoint
(what it is called and its content: a local folder's hash, a Hub commit) and the exporter
itself (its source files and the versions of the libraries that trace and quantize). A
checkpoint known by name only (a Hub branch rather than a commit, random weights) is never
cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path

from polydub.export.hub import Inspected
from polydub.export.spec import Checkpoints, ExportReport, Target

log = logging.getLogger(__name__)

ENV = "POLYDUB_EXPORT_CACHE"
REPORT = "report.json"
# What reads, traces, converts and quantizes: a new version may write other bytes.
_LIBRARIES = (
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "numpy",
    "tokenizers",
    "sentencepiece",
    "safetensors",
    "demucs",
    "einops",
)
_COMMIT = re.compile(r"[0-9a-f]{40}")


class ExportCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_env(cls) -> ExportCache | None:
        given = os.environ.get(ENV)
        return cls(Path(given).expanduser()) if given else None

    def key(
        self,
        family: str,
        checkpoints: Checkpoints,
        target: Target,
        inspected: Mapping[str, Inspected],
    ) -> str | None:
        """None when a checkpoint's content is not pinned down."""
        parts: dict[str, object] = {"family": family, "target": target.value, "code": _code()}
        for model, checkpoint in sorted(checkpoints.items()):
            found = inspected.get(model)
            # A Hub checkpoint only when asked for by commit: a branch may move between the
            # check and the download, and the export would be kept under the wrong commit.
            pinned = checkpoint.revision is not None and _COMMIT.fullmatch(checkpoint.revision)
            content = found and (found.content_sha256 or (pinned and found.revision))
            if checkpoint.random or not content:
                return None
            parts[model] = [checkpoint.describe(), checkpoint.license, content]
        blob = json.dumps(parts, sort_keys=True).encode()
        return f"{family}-{hashlib.sha256(blob).hexdigest()[:32]}"

    def load(self, key: str, out: Path) -> ExportReport | None:
        """Copy a cached export's model folders into ``out``; None when there is none."""
        entry = self.root / key
        try:
            report = ExportReport(**json.loads((entry / REPORT).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        try:
            for model in report.models:
                shutil.copytree(entry / model, out / model, dirs_exist_ok=True)
        except OSError as exc:  # a damaged entry or a full disk: export as if there were none
            log.warning("could not reuse the %s export cached in %s: %s", key, entry, exc)
            for model in report.models:
                shutil.rmtree(out / model, ignore_errors=True)
            shutil.rmtree(entry, ignore_errors=True)  # so that this export is stored afresh
            return None
        log.info("%s: reused the export cached in %s", report.family, entry)
        return report

    def store(self, key: str, out: Path, report: ExportReport) -> None:
        """Keep a finished export; a failure to cache never fails the export."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            temp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            try:
                for model in report.models:
                    shutil.copytree(out / model, temp / model)
                (temp / REPORT).write_text(json.dumps(dataclasses.asdict(report)), "utf-8")
                try:
                    temp.rename(self.root / key)
                except OSError:
                    if not (self.root / key / REPORT).is_file():
                        raise
                    # another process stored the same export first
            finally:
                shutil.rmtree(temp, ignore_errors=True)
        except OSError as exc:
            log.warning("could not cache the %s export in %s: %s", report.family, self.root, exc)


@cache
def _code() -> str:
    """The exporter's own source, the polydub modules it imports (the serving package, whose
    names and conventions the graphs follow; the language tables), the Python and library
    versions it ran with."""
    import polydub.languages
    import polydub.serving

    digest = hashlib.sha256(sys.version.encode())
    serving = Path(polydub.serving.__file__).parent
    sources = [*Path(__file__).parent.glob("*.py"), *serving.glob("*.py")]
    for path in [*sorted(sources), Path(polydub.languages.__file__)]:
        digest.update(f"{path.parent.name}/{path.name}".encode())
        digest.update(path.read_bytes())
    for name in _LIBRARIES:
        try:
            digest.update(f"{name}=={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name} absent".encode())
    return digest.hexdigest()
