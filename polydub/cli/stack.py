"""``polydub stack up|down|status``: the local servers, each on its own port, data in one folder."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polydub.settings import get_settings
from polydub.stack import Stack, StackError
from polydub.stack.stack import ServerStatus

app = typer.Typer(no_args_is_help=True, help="Start, stop and inspect the local stack of servers.")
console = Console()

Only = Annotated[
    list[str] | None, typer.Option("--only", help="Limit to these servers (repeatable).")
]


def _table(statuses: list[ServerStatus]) -> Table:
    table = Table("server", "state", "pid", "time to healthy")
    table.add_column("listens on", overflow="fold")
    for s in statuses:
        state = (
            "[green]healthy" if s.healthy else ("[yellow]running" if s.running else "[red]stopped")
        )
        ttl = f"{s.seconds_to_healthy:.1f}s" if s.seconds_to_healthy is not None else ""
        where = "  ".join(f"{k}={v}" for k, v in s.endpoints.items())
        table.add_row(s.name, state, str(s.pid or ""), ttl, where)
    return table


@app.command()
def up(only: Only = None) -> None:
    """Start the servers that are not running and wait until each is healthy.

    Before the API and the worker, the models: exported if the repository has no weights (the
    tiny preset when the Hugging Face Hub cannot be reached), then loaded into Triton."""
    settings = get_settings()
    try:
        statuses = Stack(settings, only, notify=lambda line: console.print(f"[cyan]{line}")).up()
    except StackError as exc:
        console.print(f"[red]stack up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(_table(statuses))
    console.print(f"data and logs under {settings.stack_dir.resolve()}")


@app.command()
def down(only: Only = None) -> None:
    """Stop the servers; nothing is left running."""
    Stack(get_settings(), only).down()
    console.print("stack stopped")


@app.command()
def status(only: Only = None) -> None:
    """Show each server's state; exits 1 if any is not healthy."""
    statuses = Stack(get_settings(), only).status()
    console.print(_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)
