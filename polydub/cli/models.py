"""``polydub models export|list``: build the Triton model repository from checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    family: Annotated[
        list[str] | None, typer.Option(help="Only these families (repeatable).")
    ] = None,
) -> None:
    """Export checkpoints to ONNX, check them against PyTorch, and place them for Triton."""
    from polydub.export.run import export_all
    from polydub.export.spec import Preset, Target

    reports = export_all(Preset(preset), Target(target), repository, family)
    table = Table("family", "checkpoint", "models", "fp32 max |Δ|", "int8 max |Δ|", "greedy tokens")
    for r in reports:
        table.add_row(
            r.family,
            r.checkpoint,
            ", ".join(r.models),
            _fmt(r.max_abs_diff),
            _fmt(r.int8_max_abs_diff),
            ", ".join(f"{k}={'same' if v else 'DIFFER'}" for k, v in r.token_match.items()),
        )
    console.print(table)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.2g}" for k, v in values.items())


@app.command("list")
def list_(
    repository: Annotated[
        Path | None, typer.Option(help="Triton model repository (default POLYDUB_MODEL_REPOSITORY)")
    ] = None,
) -> None:
    """Each model in the repository: family, checkpoint, license, weights, state in Triton."""
    from polydub.export.registry import model_source
    from polydub.settings import get_settings
    from polydub.stack.models import loadable_models

    settings = get_settings()
    repo = (repository or settings.model_repository).resolve()
    if not repo.is_dir():
        console.print(f"[red]{repo} does not exist")
        raise typer.Exit(1)
    loadable, _ = loadable_models(repo)
    states = _triton_states(settings.triton_http_url)
    table = Table("model", "family", "checkpoint", "license", "weights", "Triton")
    names = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    for name in names:
        source = model_source(name)
        table.add_row(
            name,
            source.family if source else "?",
            source.checkpoint if source else "",
            _license(source.license) if source else "unknown",
            "yes" if name in loadable else "[yellow]no",
            states.get(name, "not loaded") if states is not None else "[dim]not running",
        )
    console.print(table)
    if any((s := model_source(n)) is not None and "NC" in s.license for n in names):
        console.print(
            "[yellow]CC-BY-NC-4.0 weights (NLLB-200, MMS-TTS) are for non-commercial use only."
        )


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
