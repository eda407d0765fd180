"""The ``polydub`` command: one sub-command group per area (stack, db, models, ...)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from polydub.cli import api, db, dub, jobs, keys, models, sample, stack, worker

app = typer.Typer(no_args_is_help=True, add_completion=False, help="polydub: dub videos at volume.")
app.command("dub")(dub.dub)
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
