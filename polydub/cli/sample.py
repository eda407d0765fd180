"""``polydub sample make PATH``: the two-speaker sample video the README's first command dubs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Sample media to try polydub on.")
console = Console()


@app.command()
def make(
    path: Annotated[
        Path, typer.Argument(help="Where to write it (.mp4, .mkv, .mov, .webm).")
    ] = Path("sample.mp4"),
    seconds: Annotated[float, typer.Option(min=4.0, max=60.0, help="Length.")] = 12.0,
) -> None:
    """Two espeak-ng voices (male en+m3, female en+f3) taking turns over a quiet background."""
    from polydub.samples import make_sample

    try:
        clip = make_sample(path, seconds=seconds)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from None
    size = clip.path.stat().st_size
    console.print(f"{clip.path} ({clip.duration:.0f} s, {size / 1024:.0f} KiB), turns:")
    for turn in clip.turns:
        console.print(
            f"  {turn.start:5.1f}-{turn.end:5.1f} s  {turn.speaker} ({turn.voice}): {turn.text}"
        )
