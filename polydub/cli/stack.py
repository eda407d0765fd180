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
    # "time to healthy" is only known right after ``up`` started the server: a column that is
    # always empty (``status``) is left out.
    timed = any(s.seconds_to_healthy is not None for s in statuses)
    table = Table("server", "state", "pid")
    if timed:
        table.add_column("time to healthy")
    # One endpoint a line, never broken inside: a URL cut in two cannot be copied.
    widest = max(
        (len(_endpoint(k, v)) for s in statuses for k, v in s.endpoints.items()), default=10
    )
    table.add_column("listens on", no_wrap=True, min_width=min(widest, 60))
    for s in statuses:
        state = (
            "[green]healthy" if s.healthy else ("[yellow]running" if s.running else "[red]stopped")
        )
        where = "\n".join(_endpoint(k, v) for k, v in s.endpoints.items())
        row = [s.name, state, str(s.pid or "")]
        if timed:
            row.append(f"{s.seconds_to_healthy:.1f}s" if s.seconds_to_healthy is not None else "")
        table.add_row(*row, where)
    return table


def _endpoint(name: str, address: str) -> str:
    return f"{name}={address}"


def stopped_message(before: list[ServerStatus]) -> str:
    """What ``down`` did, server by server: "stack stopped" alone hides which ones."""
    stopped = [s.name for s in before if s.running]
    idle = [s.name for s in before if not s.running]
    parts = []
    if stopped:
        parts.append(f"stopped {', '.join(stopped)}")
    if idle:
        parts.append(f"{', '.join(idle)} {'was' if len(idle) == 1 else 'were'} not running")
    return "; ".join(parts) or "no servers selected"


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
    stack = Stack(get_settings(), only)
    before = stack.status()
    stack.down()
    console.print(stopped_message(before))


@app.command()
def status(only: Only = None) -> None:
    """Show each server's state; exits 1 if any is not healthy."""
    statuses = Stack(get_settings(), only).status()
    console.print(_table(statuses))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)
