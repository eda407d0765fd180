"""The ``polydub`` command: one sub-command group per area (stack, db, models, ...)."""

from __future__ import annotations

import sys
from typing import Annotated

import httpx
import typer
from rich.console import Console

from polydub.cli import api, db, dub, jobs, keys, models, review, sample, stack, worker
from polydub.errors import PolydubError
from polydub.stack.stack import StackError
from polydub.version import __version__

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="polydub: dub videos at volume.",
    # Sub-commands inherit the option names from this context: -h works everywhere.
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"polydub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """polydub: dub videos at volume."""


app.command("dub")(dub.dub)
jobs.app.command("segments")(review.segments)
jobs.app.command("render")(review.render)
app.add_typer(jobs.app, name="jobs")
app.add_typer(sample.app, name="sample")
app.add_typer(stack.app, name="stack")
app.add_typer(db.app, name="db")
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(api.app, name="api")
app.add_typer(worker.app, name="worker")

# The tiers are distributions of their own: a core-only install (the Python client, `polydub dub
# --api URL`) has none of them, and a command that needs one says which to install.
TIERS = {
    "polydub.api": "polydub-api",
    "polydub.orchestrator": "polydub-orchestrator",
    "polydub.export": "polydub-export",
    "polydub.serving": "polydub-serving",
}


def missing_tier(exc: ModuleNotFoundError) -> str | None:
    """The distribution to install when ``exc`` is a tier of polydub that is not installed."""
    name = exc.name or ""
    return next((dist for module, dist in TIERS.items() if name.startswith(module)), None)


def main() -> None:
    """The ``polydub`` console script."""
    try:
        app()
    except httpx.TransportError as exc:
        # An unreachable --api (refused, unknown host, timeout): one line, not a traceback.
        where = _api_of(exc)
        Console(stderr=True, soft_wrap=True).print(
            f"error: cannot reach the API at {where}: {exc or type(exc).__name__}",
            style="red",
            highlight=False,
            markup=False,
        )
        sys.exit(2)
    except (PolydubError, StackError) as exc:
        # Foreseeable errors the commands did not answer themselves (an unknown server name,
        # a configuration error): one line, the message written for a person.
        Console(stderr=True, soft_wrap=True).print(
            f"error: {exc}", style="red", highlight=False, markup=False
        )
        sys.exit(2)
    except ModuleNotFoundError as exc:
        dist = missing_tier(exc)
        if dist is None:
            raise
        Console(stderr=True, soft_wrap=True).print(
            f"error: this command needs {dist}, which is not installed: pip install {dist}"
            " (in a checkout: scripts/bootstrap.sh)",
            style="red",
            highlight=False,
        )
        sys.exit(2)


def _api_of(exc: httpx.TransportError) -> str:
    try:
        url = exc.request.url
    except RuntimeError:  # no request attached
        return "the configured URL"
    return f"{url.scheme}://{url.netloc.decode()}"
