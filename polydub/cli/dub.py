"""``polydub dub INPUT --to spa,fra``: the main job from a terminal.

Submits the video to the API (a remote one, or the local stack, brought up if needed), follows
the job's progress stream with a bar per stage and per language, downloads every output per
language and says where they are. Exits 1 when the job or a language failed, with the reason.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich import filesize
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from polydub.cli.connect import ApiOption, KeyOption, connect
from polydub.client import ApiError, Client, JobEvent, JobOut

console = Console()


class Background(StrEnum):
    """What the dub is mixed over (the job option ``background``)."""

    KEEP = "keep"  # the original, ducked under the dub
    SEPARATE = "separate"  # the original without its voices (a separation model)
    DROP = "drop"  # silence


class JobProgress:
    """Rich bars fed by job events: the whole job, each job-wide stage, each language."""

    def __init__(self, job: JobOut) -> None:
        self.overall = Progress(
            TextColumn("[bold]{task.description:<16}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
        )
        self.stages = Progress(
            TextColumn("  {task.description:<14}"),
            BarColumn(),
            TextColumn("{task.fields[note]}"),
        )
        self.languages = Progress(
            TextColumn("  [bold]{task.description:<5}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[note]}"),
        )
        self.group = Group(self.overall, self.stages, self.languages)
        self.job_task = self.overall.add_task("job", total=1.0, note=job.status)
        self.stage_tasks: dict[str, TaskID] = {}
        self.current_stage: str | None = None
        self.language_tasks = {
            t.language: self.languages.add_task(t.language, total=1.0, note="queued")
            for t in job.targets
        }

    def on_event(self, event: JobEvent) -> None:
        if event.type == "state":
            note = event.status or ""
            if event.error is not None:
                note += f" ({event.error.code})"
            self.overall.update(self.job_task, note=note)
            if event.status == "succeeded":
                self.overall.update(self.job_task, completed=1.0)
                self._finish_stages()
        elif event.type == "progress":
            note = f"eta {event.eta_seconds:.0f}s" if event.eta_seconds is not None else ""
            self.overall.update(self.job_task, completed=event.progress or 0.0, note=note)
            if event.language:
                self._finish_stages()
                task = self.language_tasks.get(event.language)
                if task is not None:
                    self.languages.update(
                        task, completed=event.target_progress or 0.0, note=event.stage or ""
                    )
            elif event.stage:
                self._stage(event.stage, event.stage_progress)
        elif event.type == "target" and event.language in self.language_tasks:
            task = self.language_tasks[event.language]
            if event.status == "succeeded":
                self.languages.update(task, completed=1.0, note="[green]done")
            elif event.status == "review":
                self.languages.update(task, note="[yellow]waits for review")
            else:
                reason = f": {event.error.message}" if event.error else ""
                self.languages.update(task, note=f"[red]{event.status}{reason}")

    def _stage(self, name: str, fraction: float | None) -> None:
        if name != self.current_stage:
            self._finish_stages()
            self.stage_tasks[name] = self.stages.add_task(name, total=1.0, note="running")
            self.current_stage = name
        if fraction is not None:
            note = "[green]done" if fraction >= 1.0 else "running"
            self.stages.update(self.stage_tasks[name], completed=fraction, note=note)

    def _finish_stages(self) -> None:
        for task in self.stage_tasks.values():
            if not self.stages.tasks[task].finished:
                self.stages.update(task, total=1.0, completed=1.0, note="[green]done")
        self.current_stage = None


def dub(
    to: Annotated[str, typer.Option("--to", help="Target languages, ISO 639-3: spa,fra")],
    input: Annotated[
        Path | None,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="A video or audio file (or --url)."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Media the server fetches (https) instead of a file; the server must enable "
            "source URLs (POLYDUB_SOURCE_URL_ENABLED).",
        ),
    ] = None,
    source: Annotated[
        str, typer.Option("--from", help="The spoken language (ISO 639-3), or auto.")
    ] = "auto",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where the outputs go (default ./polydub-out/<job id>/)."),
    ] = None,
    speakers: Annotated[
        int | None, typer.Option("--speakers", min=1, max=20, help="How many people speak.")
    ] = None,
    background: Annotated[
        Background | None,
        typer.Option(
            "--background",
            help="What the dub is mixed over: keep (the original, ducked), separate (the "
            "original without its voices) or drop (silence). Default: separate when the server "
            "serves a separation model, else keep.",
        ),
    ] = None,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Stop each language after translation for a person to check: nothing is "
            "spoken until 'polydub jobs render' approves it.",
        ),
    ] = False,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Dub a video into other languages and download the results."""
    targets = [t.strip() for t in to.split(",") if t.strip()]
    media: Path | str | None = input if url is None else url
    if media is None or (input is not None and url is not None) or not targets:
        console.print("[red]give a file or --url (one of them) and the languages --to[/red]")
        raise typer.Exit(2)
    connection = connect(console, api, key, start_stack=True)
    with Client(connection.url, connection.key) as client:
        try:
            if isinstance(media, str):
                job = client.create_job_from_url(
                    media,
                    targets,
                    source_language=source,
                    num_speakers=speakers,
                    background=background.value if background else None,
                    review=review,
                    idempotency_key=str(uuid.uuid4()),
                )
            else:
                job = _submit(client, media, targets, source, speakers, background, review)
        except ApiError as exc:
            console.print(f"[red]the job was refused ({exc.code}):[/red] {exc.message}")
            raise typer.Exit(2) from None
        where = "the local stack" if connection.local else connection.url
        _print_models(client)
        console.print(
            f"job [bold]{job.id}[/bold] on {where}: {getattr(media, 'name', media)} → "
            f"{', '.join(job.target_languages)}"
        )
        job = _follow(client, job)
        for warning in job.warnings:
            where = f"{warning.language}: " if warning.language else ""
            console.print(f"[yellow]warning[/yellow] {where}{warning.message} ({warning.code})")
        folder = out or Path("polydub-out") / str(job.id)
        if job.status == "review":
            _report_review(job)
            return
        failed = [t for t in job.targets if t.status != "succeeded"]
        if job.status != "succeeded":
            _report_failure(job)
            raise typer.Exit(1)
        written = _download(client, job.id, folder)
    _print_outputs(written, folder)
    if failed:
        _report_failure(job)
        raise typer.Exit(1)


def _print_models(client: Client) -> None:
    """Which checkpoint serves each family, and plainly which ones are random (noise)."""
    try:
        served = client.languages().served
    except ApiError:
        return
    families: dict[str, list[str]] = {}
    for model in served:
        weights = "[red]RANDOM weights: noise[/red]" if model.random_weights else "real"
        families.setdefault(model.family, []).append(f"{model.checkpoint} ({weights})")
    for family, sources in sorted(families.items()):
        unique = sorted(set(sources))
        shown = unique[0] if len(unique) == 1 else "; ".join(unique)
        console.print(f"[dim]model[/dim] {family}: {shown}")


def _submit(
    client: Client,
    path: Path,
    targets: list[str],
    source: str,
    speakers: int | None,
    background: Background | None = None,
    review: bool = False,
) -> JobOut:
    with Progress(
        TextColumn("[bold]upload {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=False,
    ) as bars:
        task = bars.add_task(path.name, total=path.stat().st_size)
        return client.create_job(
            path,
            targets,
            source_language=source,
            num_speakers=speakers,
            background=background.value if background else None,
            review=review,
            idempotency_key=str(uuid.uuid4()),  # a retried request never makes a second job
            on_progress=lambda sent, total: bars.update(task, completed=sent, total=total),
        )


def _follow(client: Client, job: JobOut) -> JobOut:
    view = JobProgress(job)
    try:
        with Live(view.group, console=console, refresh_per_second=8):
            job = client.wait(job.id, on_event=view.on_event)
            view.on_event(JobEvent(id=0, type="state", status=job.status, error=job.error))
    except KeyboardInterrupt:
        console.print(
            f"\nstopped following; the job goes on. 'polydub jobs show {job.id}' or "
            f"'polydub jobs cancel {job.id}'"
        )
        raise typer.Exit(130) from None
    return job


def _download(client: Client, job_id: uuid.UUID, folder: Path) -> dict[str, list[Path]]:
    with Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=True,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def on_progress(language: str, name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bars.add_task(f"{language}/{name}", total=total)
            bars.update(tasks[name], completed=done)

        return client.download_outputs(job_id, folder, on_progress=on_progress)


def _print_outputs(written: dict[str, list[Path]], folder: Path) -> None:
    table = Table("language", "file", "size", title=f"outputs in {folder.resolve()}")
    for language, paths in written.items():
        for path in sorted(paths):
            size = path.stat().st_size
            table.add_row(language, str(path), filesize.decimal(size))
    console.print(table)
    for language, paths in written.items():
        video = next((p for p in paths if p.suffix in (".mp4", ".mkv")), None)
        if video is not None:
            console.print(f"[green]{language}[/green]: {video}")


def _report_review(job: JobOut) -> None:
    """The job stopped after translation for a person to approve: nothing to download yet."""
    waiting = [t.language for t in job.targets if t.status == "review"]
    console.print(
        f"[yellow]job {job.id} waits for review[/yellow]: {', '.join(waiting)} translated, "
        "nothing spoken yet. Read and edit the segments, then render each language:"
    )
    for language in waiting:
        console.print(f"  polydub jobs segments {job.id} --lang {language} --format srt")
        console.print(f"  polydub jobs render {job.id} --lang {language}")


def _report_failure(job: JobOut) -> None:
    if job.error is not None:
        console.print(f"[red]job {job.status}:[/red] {job.error.message} ({job.error.code})")
    elif job.status != "succeeded":
        console.print(f"[red]job {job.status}[/red]")
    for target in job.targets:
        if target.status != "succeeded":
            reason = f"{target.error.message} ({target.error.code})" if target.error else ""
            console.print(f"[red]{target.language}: {target.status}[/red] {reason}")
