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
