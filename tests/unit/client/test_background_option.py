"""The ``background`` job option (issue #16) from the Python client and ``polydub dub``: the form
field the client sends parses on the API's side into the option the orchestrator reads, and the
CLI refuses a value it does not know before contacting anything."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from polydub.api.routes.jobs import _options_from_form
from polydub.cli import app
from polydub.cli.dub import Background
from polydub.client._common import Background as ClientBackground
from polydub.client._common import job_fields

pytestmark = pytest.mark.unit


def _fields(background: ClientBackground | None) -> dict[str, list[str]]:
    fields = job_fields(
        ["spa"],
        source_language="auto",
        num_speakers=None,
        keep_background=True,
        subtitles_only=False,
        start_time=None,
        end_time=None,
        callback_url=None,
        background=background,
    )
    out: dict[str, list[str]] = {}
    for name, value in fields:
        out.setdefault(name, []).append(value)
    return out


@pytest.mark.parametrize("background", ["keep", "separate", "drop"])
def test_the_client_sends_the_background_the_api_reads(background: ClientBackground) -> None:
    fields = _fields(background)
    assert fields["background"] == [background]
    assert _options_from_form(fields).options_json()["background"] == background


def test_no_background_leaves_the_choice_to_the_server() -> None:
    fields = _fields(None)
    assert "background" not in fields
    assert _options_from_form(fields).options_json()["background"] is None


def test_the_cli_choices_are_the_clients() -> None:
    assert [b.value for b in Background] == ["keep", "separate", "drop"]
    assert set(get_args(ClientBackground)) == {b.value for b in Background}


def test_the_cli_offers_background_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["dub", "-h"], terminal_width=200)
    assert shown.exit_code == 0 and "--background" in shown.output
    for choice in ("keep", "separate", "drop"):
        assert choice in shown.output
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not even media")
    # Refused by the option parser (exit 2) before any API is looked for: the port is closed.
    argv = ["dub", str(clip), "--to", "spa", "--background", "loud", "--api", "http://127.0.0.1:9"]
    refused = runner.invoke(app, argv, terminal_width=200)
    assert refused.exit_code == 2
    assert "loud" in refused.output and "--background" in refused.output
