"""``polydub models export|list``: build the Triton model repository from checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Export and list the models served by Triton.")
console = Console()


@app.command()
def export(
    preset: Annotated[str, typer.Option(help="tiny | small | large | auto")] = "auto",
    target: Annotated[str, typer.Option(help="cpu (fp32 + int8) | gpu (fp16 + TensorRT)")] = "cpu",
    repository: Annotated[Path, typer.Option(help="Triton model repository")] = Path(
        "model_repository"
    ),
    templates: Annotated[
        Path | None,
        typer.Option(
            help="Where the models' configs and python models come from: a copy of polydub's "
            "model_repository/ (default: the repository itself)."
        ),
    ] = None,
    family: Annotated[
        list[str] | None, typer.Option(help="Only these families (repeatable).")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="KEY=REF[@REVISION] (repeatable): a Hub id, a local directory or 'random' for "
            "one served model, e.g. whisper=openai/whisper-large-v3-turbo, nllb=/srv/nllb-1.3B, "
            "pyannote_segmentation=pyannote/segmentation-3.0 (gated: needs HF_TOKEN). "
            "separation=HUB_ID|DIR|FILE.th also takes a demucs HT-Demucs checkpoint: a .th "
            "file, or a directory or Hub repository holding one (OWNER/NAME:FILE.th among "
            "several), served as separation_htdemucs.",
        ),
    ] = None,
) -> None:
    """Export checkpoints to ONNX, check them against PyTorch, and place them for Triton."""
    from polydub.errors import PolydubError
    from polydub.export.plan import ModelChoice, make_plan
    from polydub.export.run import export_all, require_writable
    from polydub.export.spec import Preset, Target

    try:
        chosen_preset, chosen_target = Preset(preset), Target(target)
    except ValueError as exc:
        _fail(str(exc))
    try:
        require_writable(repository)
        plan = make_plan(chosen_preset, [ModelChoice.parse(m) for m in model or []], family)
        for name, checkpoint in sorted(plan.checkpoints().items()):
            typer.echo(f"{name}: {checkpoint.describe()}")
        result = export_all(plan, chosen_target, repository, templates)
    except PolydubError as exc:
        _fail(exc.message)
    table = Table("model", "family", "checkpoint", "license", "precision", "parity (max |Δ|)")
    for served in sorted(result.manifest.models.values(), key=lambda m: m.name):
        if not any(served.name in r.models for r in result.reports):
            continue
        table.add_row(
            served.name,
            served.family,
            served.checkpoint,
            _license(served.license),
            served.precision,
            ", ".join(f"{k}={v:.2g}" for k, v in served.parity.items()),
        )
    console.print(table)
    # Every note, unwrapped: a piped terminal is 80 columns and a note must never be cut.
    for report in result.reports:
        for note in report.notes:
            typer.echo(f"note [{report.family}]: {note}")
    random = result.manifest.random_families()
    if random:
        typer.echo(
            f"RANDOM WEIGHTS (output is noise) for: {', '.join(random)}. "
            "Real checkpoints: connect to the Hugging Face Hub or pass --model KEY=DIR."
        )


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("list")
def list_(
    repository: Annotated[
        Path | None, typer.Option(help="Triton model repository (default POLYDUB_MODEL_REPOSITORY)")
    ] = None,
) -> None:
    """Each model in the repository: family, checkpoint, license, precision, whether its weights
    are real or random, and its state in Triton (from the repository's manifest)."""
    from polydub.export.registry import model_source
    from polydub.manifest import MANIFEST_MODEL, read_manifest
    from polydub.settings import get_settings
    from polydub.stack.models import loadable_models

    settings = get_settings()
    repo = (repository or settings.model_repository).resolve()
    if not repo.is_dir():
        console.print(f"[red]{repo} does not exist")
        raise typer.Exit(1)
    loadable, _ = loadable_models(repo)
    manifest = read_manifest(repo)
    states = _triton_states(settings.triton_http_url)
    table = Table("model", "family", "checkpoint", "license", "precision", "weights", "Triton")
    names = sorted(
        p.name
        for p in repo.iterdir()
        if (p / "config.pbtxt").is_file() and p.name != MANIFEST_MODEL
    )
    licenses = []
    for name in names:
        served = manifest.models.get(name)
        source = model_source(name)
        if served is not None:
            family, checkpoint, license_ = served.family, served.checkpoint, served.license
            weights = "[red]RANDOM (noise)" if served.random else "real"
        else:
            family = source.family if source else "?"
            checkpoint = source.checkpoint if source else ""
            license_ = source.license if source else "unknown"
            weights = "exported, not in the manifest" if name in loadable else "[yellow]none"
        licenses.append(license_)
        table.add_row(
            name,
            family,
            checkpoint,
            _license(license_),
            served.precision if served else "",
            weights,
            states.get(name, "not loaded") if states is not None else "[dim]not running",
        )
    console.print(table)
    if any("NC" in name for name in licenses):
        console.print(
            "[yellow]CC-BY-NC-4.0 weights (NLLB-200, MMS-TTS) are for non-commercial use only."
        )
    random = manifest.random_families()
    if random:
        typer.echo(f"random weights (output is noise): {', '.join(random)}")


def _license(name: str) -> str:
    return f"[yellow]{name}" if "NC" in name else name


def _triton_states(url: str) -> dict[str, str] | None:
    import httpx

    try:
        answer = httpx.post(f"{url}/v2/repository/index", json={}, timeout=3.0)
        answer.raise_for_status()
    except httpx.HTTPError:
        return None
    return {str(m["name"]): str(m.get("state") or "not loaded") for m in answer.json()}
