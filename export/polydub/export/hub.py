"""Checkpoints on the Hugging Face Hub or in a local directory: access, loading, checks, errors.

Every family loads through the same calls, so a hub id, a revision and a local directory
(air-gapped sites copy weights in) work the same everywhere:

* ``pretrained_args(checkpoint)``: ``(ref, kwargs)`` for transformers' ``from_pretrained``;
* ``fetch_file(checkpoint, name)``: one file of the checkpoint on local disk;
* ``fetch_single(checkpoint, suffix)``: a single-file checkpoint (demucs ``.th``) on the Hub;
* ``inspect(checkpoint, expected)``: before any file is written into the repository, proves
  the checkpoint exists, is of the family (its config's ``model_type`` or its files), and fits
  this machine's memory and disk; returns the resolved revision or content hash.

``explain(exc)`` is the one table from huggingface_hub's and the system's errors to a one-line
``ConfigurationError`` that names the fix; the CLI prints its message, never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from polydub.errors import ConfigurationError, PolydubError
from polydub.export.spec import Checkpoint, Preset

log = logging.getLogger(__name__)

# Peak memory of an export relative to the checkpoint's weight files: the torch model, the
# traced graph and an onnxruntime session for the parity checks are alive together.
EXPORT_MEMORY_FACTOR = 3.0
# Disk an export needs relative to the weights: the download, fp32 graphs and a quantized copy.
EXPORT_DISK_FACTOR = 3.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".onnx")


def hub_url() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        return httpx.head(f"{hub_url()}/api/models", timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def resolve_preset(preset: Preset) -> Preset:
    """``auto`` becomes ``small`` when the Hub answers, else ``tiny`` (``polydub.export.plan``
    then serves the bundled real Whisper)."""
    if preset is not Preset.AUTO:
        return preset
    return Preset.SMALL if hub_reachable() else Preset.TINY


def gated_message(checkpoint: Checkpoint) -> str:
    return (
        f"{checkpoint.ref} is gated on the Hugging Face Hub: accept its terms on "
        f"{hub_url()}/{checkpoint.ref} and set HF_TOKEN (or leave it out: polydub runs without it)"
    )


def require_access(checkpoint: Checkpoint) -> str | None:
    """The token to use for a checkpoint; a clear error when a gated model has none."""
    token = hub_token()
    if checkpoint.gated and not token and checkpoint.local is None:
        raise ConfigurationError(gated_message(checkpoint), code="gated_model_needs_token")
    return token


def pretrained_args(checkpoint: Checkpoint) -> tuple[str, dict[str, Any]]:
    """``(ref, kwargs)`` for ``from_pretrained``: a local directory, or a hub id at a revision."""
    local = checkpoint.local
    if local is not None:
        return str(local), {}
    kwargs: dict[str, Any] = {"token": require_access(checkpoint)}
    if checkpoint.revision:
        kwargs["revision"] = checkpoint.revision
    return checkpoint.ref, kwargs


def fetch_file(checkpoint: Checkpoint, filename: str) -> Path:
    """One file of the checkpoint on local disk (downloaded into the Hub cache if needed)."""
    local = checkpoint.local
    if local is not None:
        if not local.is_dir():
            raise ConfigurationError(f"{local}: no such directory", code="checkpoint_not_found")
        path = local / filename
        if not path.is_file():
            raise ConfigurationError(
                f"{local} has no {filename}: not a checkpoint of this model family",
                code="checkpoint_not_of_family",
            )
        return path
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            checkpoint.ref,
            filename,
            revision=checkpoint.revision,
            token=require_access(checkpoint),
        )
    )


# ``owner/name:file``: a Hub checkpoint that is one named file of its repository (a repository
# may hold several, e.g. demucs's four HT-Demucs variants); Hub ids never contain a colon.
FILE_SEPARATOR = ":"


def split_file_ref(ref: str) -> tuple[str, str | None]:
    """``(repo id, file)`` of a ``owner/name:file`` ref; ``(ref, None)`` without a file."""
    repo_id, sep, filename = ref.partition(FILE_SEPARATOR)
    return (repo_id, filename) if sep and filename else (ref, None)


def fetch_single(checkpoint: Checkpoint, suffix: str) -> Path | None:
    """The one file ending in ``suffix`` at the root of a Hub checkpoint (``owner/name``, or
    ``owner/name:file`` naming it), downloaded into the Hub cache at the revision it was
    listed at. None for a local or random checkpoint or a repository holding none; several
    without a name: ConfigurationError ``checkpoint_ambiguous`` naming them."""
    if checkpoint.random or checkpoint.local is not None:
        return None
    repo_id, filename = split_file_ref(checkpoint.ref)
    token = require_access(checkpoint)
    revision = checkpoint.revision
    import requests
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    if filename is None:
        try:
            info = HfApi().model_info(repo_id, revision=revision, token=token)
            listed = [s.rfilename for s in info.siblings or ()]
        except (OfflineModeIsEnabled, requests.ConnectionError, requests.Timeout):
            # No Hub: what the cache holds of the repository stands for its listing (a
            # mask-net checkpoint then loads from the cache by its fixed file names).
            cached, revision = _cached_files(repo_id, revision, suffix)
            if cached is None:
                return None
            listed = [p.name for p in cached.glob(f"*{suffix}")]
        else:
            revision = info.sha or revision  # download at the commit that was listed
        found = sorted(name for name in listed if "/" not in name and name.endswith(suffix))
        if len(found) > 1:
            raise ConfigurationError(
                f"{checkpoint.describe()} holds {len(found)} {suffix} checkpoints "
                f"({', '.join(found)}): name one as {repo_id}{FILE_SEPARATOR}{found[0]}",
                code="checkpoint_ambiguous",
            )
        if not found:
            return None
        filename = found[0]
    return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))


def _cached_files(repo_id: str, revision: str | None, suffix: str) -> tuple[Path | None, str]:
    """(the cached snapshot of ``repo_id`` at ``revision``, its commit), or (None, revision)
    when the Hub cache holds none; only files ending in ``suffix`` are looked at."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=[f"*{suffix}"], local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        return None, revision or "main"
    return folder, folder.name  # snapshots/<commit>/


@dataclass(frozen=True)
class Expected:
    """What a checkpoint of a family looks like: its config file and, for transformers
    checkpoints, the config's ``model_type``."""

    config_file: str = "config.json"
    model_type: str | None = None


@dataclass(frozen=True)
class Inspected:
    revision: str | None  # the Hub commit a hub id resolved to
    content_sha256: str | None  # a local directory's files, hashed
    weight_bytes: int


def inspect(checkpoint: Checkpoint, expected: Expected) -> Inspected:
    """Check a checkpoint before exporting it; raises ConfigurationError with the fix."""
    config = fetch_file(checkpoint, expected.config_file)
    if expected.model_type is not None:
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"{checkpoint.describe()}: {expected.config_file} is not valid JSON ({exc})",
                code="checkpoint_not_of_family",
            ) from exc
        if model_type != expected.model_type:
            raise ConfigurationError(
                f"{checkpoint.describe()} is a {model_type!r} checkpoint, "
                f"not {expected.model_type!r}",
                code="checkpoint_not_of_family",
            )
    local = checkpoint.local
    if local is not None:
        files = sorted(p for p in local.rglob("*") if p.is_file())
        weights = _weight_bytes((p.name, p.stat().st_size) for p in files)
        _check_fits(checkpoint, weights)
        return Inspected(None, _content_hash(local, files), weights)
    from huggingface_hub import HfApi

    info = HfApi().model_info(
        checkpoint.ref,
        revision=checkpoint.revision,
        token=require_access(checkpoint),
        files_metadata=True,
    )
    weights = _weight_bytes((s.rfilename, s.size or 0) for s in info.siblings or ())
    _check_fits(checkpoint, weights)
    return Inspected(info.sha, None, weights)


def _weight_bytes(files: Iterable[tuple[str, int]]) -> int:
    """Bytes of one copy of the weights: a repository that ships both formats counts once."""
    sizes: dict[str, int] = {}
    for name, size in files:
        suffix = Path(name).suffix
        if suffix in WEIGHT_SUFFIXES:
            sizes[suffix] = sizes.get(suffix, 0) + size
    return max(sizes.values(), default=0)


def _content_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def available_memory() -> int:
    """Bytes of memory this process can still use (MemAvailable, or the cgroup's limit)."""
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        meminfo = Path("/proc/meminfo").read_text()
        for line in meminfo.splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    cgroup = Path("/sys/fs/cgroup/memory.max")
    try:
        limit = cgroup.read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def _check_fits(checkpoint: Checkpoint, weight_bytes: int, where: Path | None = None) -> None:
    need_memory = int(weight_bytes * EXPORT_MEMORY_FACTOR)
    if need_memory > available_memory():
        raise ConfigurationError(
            f"{checkpoint.describe()} has {weight_bytes / 2**30:.1f} GiB of weights; exporting it "
            f"needs about {need_memory / 2**30:.1f} GiB of memory and "
            f"{available_memory() / 2**30:.1f} GiB is available: use a smaller checkpoint "
            "or a larger machine",
            code="checkpoint_too_large",
        )
    free = shutil.disk_usage(where or Path.cwd()).free
    if int(weight_bytes * EXPORT_DISK_FACTOR) > free:
        raise ConfigurationError(
            f"{checkpoint.describe()} needs about {weight_bytes * EXPORT_DISK_FACTOR / 2**30:.1f} "
            f"GiB of disk to export and {free / 2**30:.1f} GiB is free",
            code="no_disk_space",
        )


def explain(exc: BaseException, checkpoint: Checkpoint | None = None) -> PolydubError | None:
    """A foreseeable export failure as one ConfigurationError naming the fix; None otherwise."""
    if isinstance(exc, PolydubError):
        return exc
    what = checkpoint.describe() if checkpoint is not None else "a checkpoint"
    from huggingface_hub import errors as hf

    table: list[tuple[type[BaseException], str, str]] = [
        (  # before RepositoryNotFoundError, its base class
            hf.GatedRepoError,
            "gated_model_needs_token",
            gated_message(checkpoint) if checkpoint else "a gated model needs HF_TOKEN",
        ),
        (hf.RevisionNotFoundError, "revision_not_found", f"{what}: no such revision on the Hub"),
        (
            hf.RepositoryNotFoundError,
            "checkpoint_not_found",
            f"{what} does not exist on the Hub (or is private: set HF_TOKEN)",
        ),
        (  # before EntryNotFoundError, its base class
            hf.LocalEntryNotFoundError,
            "hub_unreachable",
            f"{what} is not in the local Hugging Face cache and the Hub cannot be reached: "
            "connect, or pass a local directory with --model",
        ),
        (
            hf.EntryNotFoundError,
            "checkpoint_not_of_family",
            f"{what} lacks a file this family needs",
        ),
        (
            hf.OfflineModeIsEnabled,
            "hub_unreachable",
            f"{what} needs the Hub but HF_HUB_OFFLINE is set: pass a local directory with --model",
        ),
    ]
    for kind, code, message in table:
        if isinstance(exc, kind):
            return ConfigurationError(message, code=code)
    if isinstance(exc, MemoryError):
        return ConfigurationError(
            f"exporting {what} ran out of memory: use a smaller checkpoint or a larger machine",
            code="out_of_memory",
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ConfigurationError(
            f"no disk space left while exporting {what}: free some, or export elsewhere "
            "with --repository",
            code="no_disk_space",
        )
    import requests

    if isinstance(exc, httpx.HTTPError | ConnectionError | requests.ConnectionError):
        return ConfigurationError(
            f"the Hugging Face Hub could not be reached for {what} ({exc})", code="hub_unreachable"
        )
    return None
