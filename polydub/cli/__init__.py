"""The ``polydub`` command: one sub-command group per area (stack, db, models, ...)."""

from __future__ import annotations

import typer

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
