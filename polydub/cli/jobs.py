"""``polydub jobs list|show|cancel|download``: the jobs of your API key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from polydub.cli.connect import ApiOption, KeyOption, connect
from polydub.client import ApiError, Client, JobOut
from polydub.jobs import ACTIVE, JobStatus

app = typer.Typer(no_args_is_help=True, help="Your jobs: list, show, cancel, download.")
console = Console()

JobArg = Annotated[str, typer.Argument(help="The job id.")]


def _client(api: str | None, key: str | None) -> Client:
    connection = connect(console, api, key, start_stack=False)
    return Client(connection.url, connection.key)


def _fail(exc: ApiError) -> typer.Exit:
    console.print(f"[red]{exc.message}[/red] ({exc.code})")
    return typer.Exit(1)


def _percent(job: JobOut) -> str:
    return f"{job.percent}%" if job.status in ACTIVE else ""


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed or cancelled")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """The newest jobs first."""
    with _client(api, key) as client:
        try:
            page = client.list_jobs(status=cast(JobStatus | None, status), limit=limit)
        except ApiError as exc:
            raise _fail(exc) from None
    table = Table("id", "status", "stage", "languages", "input", "created")
    for job in page.items:
        table.add_row(
            str(job.id),
            job.status,
            " ".join(x for x in (job.stage or "", _percent(job)) if x),
            f"{job.detected_language or job.source_language} → {','.join(job.target_languages)}",
            job.input.filename or "",
            job.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"[dim]more: --limit {limit * 2}[/dim]")


@app.command()
def show(
    job_id: JobArg,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON as it is.")] = False,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """A job's state, per-language status and error."""
    with _client(api, key) as client:
        try:
            job = client.get_job(job_id)
        except ApiError as exc:
            raise _fail(exc) from None
    if as_json:
        print(job.model_dump_json(indent=2))
        return
    console.print(f"[bold]{job.id}[/bold]  {job.status}  {job.percent}%  {job.stage or ''}")
    console.print(
        f"input {job.input.filename or '?'} ({job.input.duration_seconds or 0:.1f} s), "
        f"{job.detected_language or job.source_language} → {', '.join(job.target_languages)}"
    )
    if job.error is not None:
        console.print(f"[red]error {job.error.code}:[/red] {job.error.message}")
    table = Table("language", "status", "stage", "progress", "error")
    for target in job.targets:
        table.add_row(
            target.language,
            target.status,
            target.stage or "",
            f"{target.progress:.0%}",
            target.error.message if target.error else "",
        )
    console.print(table)


@app.command()
def cancel(job_id: JobArg, api: ApiOption = None, key: KeyOption = None) -> None:
    """Cancel a job: at once if queued, at the next stage boundary if running."""
    with _client(api, key) as client:
        try:
            job = client.cancel_job(job_id)
        except ApiError as exc:
            raise _fail(exc) from None
    note = (
        "cancelled"
        if job.status == JobStatus.CANCELLED
        else "cancel requested (next stage boundary)"
    )
    console.print(f"{job.id}: {note}")


@app.command()
def download(
    job_id: JobArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Default ./polydub-out/<job id>/.")
    ] = None,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Download a finished job's outputs, one folder per language."""
    folder = out or Path("polydub-out") / job_id
    with _client(api, key) as client:
        try:
            written = client.download_outputs(job_id, folder)
        except ApiError as exc:
            raise _fail(exc) from None
    for language, paths in written.items():
        for path in paths:
            console.print(f"{language}  {path}")
