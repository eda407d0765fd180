"""``polydub jobs segments|render``: review a language's segments (export, import an edited SRT,
VTT or JSON) and render them again."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from polydub.cli.connect import ApiOption, KeyOption, connect
from polydub.client import ApiError, Client
from polydub.review import (
    ReviewSegment,
    SegmentsOut,
    SegmentsPatch,
    edits_from_cues,
    parse_cues,
)

console = Console()

JobArg = Annotated[str, typer.Argument(help="The job id.")]
LangOption = Annotated[str, typer.Option("--lang", "-l", help="The target language, e.g. spa.")]


class Format(StrEnum):
    JSON = "json"
    SRT = "srt"


def _client(api: str | None, key: str | None) -> Client:
    connection = connect(console, api, key, start_stack=False)
    return Client(connection.url, connection.key)


def _fail(exc: ApiError) -> typer.Exit:
    console.print(f"[red]{exc.message}[/red] ({exc.code})")
    return typer.Exit(1)


def _path(job_id: str, language: str, tail: str) -> str:
    return f"/jobs/{job_id}/languages/{language}/{tail}"


def segments(
    job_id: JobArg,
    lang: LangOption,
    format_: Annotated[Format, typer.Option("--format", "-f", help="How to print.")] = Format.JSON,
    import_: Annotated[
        Path | None,
        typer.Option(
            "--import",
            exists=True,
            dir_okay=False,
            help="Edits to apply: an SRT or VTT (matched to segments by time; its text becomes"
            " the translation) or JSON ({'segments': [{'id': 0, 'translation': ...}]}).",
        ),
    ] = None,
    api: ApiOption = None,
    key: KeyOption = None,
) -> None:
    """Print a language's segments, or apply edits to them (then: polydub jobs render)."""
    with _client(api, key) as client:
        try:
            # The client's own request path: retries, errors as ApiError.
            current = SegmentsOut.model_validate(
                client._request("GET", _path(job_id, lang, "segments"))
            )
            if import_ is None:
                print(_render(current, format_))
                return
            patch = _patch(current, import_)
            if not patch.segments and not patch.voices:
                console.print("nothing to change: the file says what the segments say")
                return
            edited = client._request(
                "PATCH",
                _path(job_id, lang, "segments"),
                json=patch.model_dump(exclude_unset=True),
                headers={"If-Match": current.etag},
            )
        except ApiError as exc:
            raise _fail(exc) from None
    console.print(
        f"{len(patch.segments)} segment(s) edited (etag {edited['etag']});"
        f" render them with: polydub jobs render {job_id} --lang {lang}"
    )


def render(job_id: JobArg, lang: LangOption, api: ApiOption = None, key: KeyOption = None) -> None:
    """Render a language's edited segments: a new version of its outputs."""
    with _client(api, key) as client:
        try:
            out = client._request("POST", _path(job_id, lang, "render"))
        except ApiError as exc:
            raise _fail(exc) from None
    console.print(
        f"rendering version {out['version']} of {lang}; follow it with: polydub jobs show {job_id}"
    )


def _patch(current: SegmentsOut, path: Path) -> SegmentsPatch:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".srt", ".vtt"):
        state = [
            ReviewSegment(s.id, s.start, s.end, s.speaker, s.source_text, s.translation, s.voice)
            for s in current.segments
        ]
        return edits_from_cues(state, parse_cues(text))
    data: Any = json.loads(text)
    if isinstance(data, dict) and "etag" in data:  # an export edited in place: send what changed
        by_id = {s.id: s for s in current.segments}
        fields = ("start", "end", "speaker", "source_text", "translation")
        edits = []
        for s in data["segments"]:
            before = by_id.get(s["id"])
            changed = {f: s[f] for f in fields if before is None or s.get(f) != getattr(before, f)}
            if changed:
                edits.append({"id": s["id"], **changed})
        return SegmentsPatch.model_validate({"segments": edits})
    return SegmentsPatch.model_validate(data)


def _render(current: SegmentsOut, format_: Format) -> str:
    if format_ is Format.JSON:
        return current.model_dump_json(indent=1)
    blocks = [
        f"{n}\n{_stamp(s.start)} --> {_stamp(s.end)}\n{s.translation}"
        for n, s in enumerate(current.segments, 1)
    ]
    return "\n\n".join(blocks) + "\n"


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02}:{ms // 60_000 % 60:02}:{ms // 1000 % 60:02},{ms % 1000:03}"
