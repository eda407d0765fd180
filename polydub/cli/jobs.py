"""``polydub jobs list|show|cancel|download``: the jobs of your API key."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Column, Table

from polydub.cli.connect import ApiOption, KeyOption, connect
from polydub.client import ApiError, Client, JobOut
from polydub.jobs import ACTIVE, JobStatus

app = typer.Typer(no_args_is_help=True, help="Your jobs: list, show, cancel, download.")
console = Console()

JobArg = Annotated[str, typer.Argument(help="The job id, or a unique prefix of it.")]
# A prefix is looked up among this many of the key's newest jobs (a listing, page by page).
PREFIX_SEARCH_LIMIT = 2000


def _client(api: str | None, key: str | None) -> Client:
    connection = connect(console, api, key, start_stack=False)
    return Client(connection.url, connection.key)


def _fail(exc: ApiError) -> typer.Exit:
    console.print(f"[red]{exc.message}[/red] ({exc.code})")
    return typer.Exit(1)


def _resolve(client: Client, job_id: str) -> str:
    """The full id for ``job_id``: itself when it is a UUID, else the one job of this key whose
    id starts with it (what ``jobs list`` shows is long; people paste the start of it)."""
    text = job_id.strip().lower()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        pass
    if not text or not all(c in "0123456789abcdef-" for c in text):
        console.print(f"[red]{job_id!r} is not a job id (a UUID or the start of one)[/red]")
        raise typer.Exit(2)
    matches = []
    try:
        for job in itertools.islice(client.iter_jobs(page_size=200), PREFIX_SEARCH_LIMIT):
            if str(job.id).startswith(text):
                matches.append(str(job.id))
    except ApiError as exc:
        raise _fail(exc) from None
    if len(matches) == 1:
        return matches[0]
    if not matches:
        console.print(f"[red]no job of yours starts with {text!r}[/red]")
    else:
        console.print(
            f"[red]{text!r} is ambiguous: {len(matches)} jobs start with it "
            f"({', '.join(matches[:5])}{', ...' if len(matches) > 5 else ''}); type more of it[/red]"
        )
    raise typer.Exit(1)


def _percent(job: JobOut) -> str:
    return f"{job.percent}%" if job.status in ACTIVE else ""


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="queued, running, review, succeeded, failed or cancelled")
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
    # Ids are copied from here: never cut or wrapped, whatever the terminal's width.
    table = Table(
        Column("id", no_wrap=True, min_width=36),
        Column("status", no_wrap=True, min_width=9),
        "stage",
        "languages",
        "input",
        Column("created", overflow="fold"),
    )
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
            job = client.get_job(_resolve(client, job_id))
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
            job = client.cancel_job(_resolve(client, job_id))
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
    with _client(api, key) as client:
        full_id = _resolve(client, job_id)
        folder = out or Path("polydub-out") / full_id
        try:
            job = client.get_job(full_id)
            done = [t.language for t in job.targets if t.status == JobStatus.SUCCEEDED]
            written = client.download_outputs(full_id, folder, languages=done) if done else {}
        except ApiError as exc:
            raise _fail(exc) from None
    for language, paths in written.items():
        for path in paths:
            console.print(f"{language}  {path}")
    for target in job.targets:
        if target.status != JobStatus.SUCCEEDED:
            reason = f": {target.error.message} ({target.error.code})" if target.error else ""
            console.print(
                f"[yellow]{target.language}: no outputs, {target.status}{reason}[/yellow]"
            )
    if not done:
        # Nothing to download is a failure of this command, not silence and exit 0.
        why = f": {job.error.message} ({job.error.code})" if job.error else ""
        state = "not finished yet" if job.status in ACTIVE else "has no outputs"
        if job.status == JobStatus.REVIEW:
            state = "waits for review ('polydub jobs render ID --lang X' approves a language)"
        console.print(f"[red]job {full_id} {state} ({job.status}){why}[/red]")
        raise typer.Exit(1)
