"""The path every user with internet takes, proven offline: the Hugging Face Hub answers (a fake
one on loopback, serving every ``small``-preset repository in its real file layout), no token is
set, and ``polydub dub`` on a fresh stack exports the ``auto`` preset from it and dubs the sample.

Also: a token whose gated terms are not accepted, and the foreseeable mistakes of ``--model``
(a gated model without a token, a repository or revision that does not exist), each one line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from polydub.manifest import read_manifest
from tests.checkout import TEMPLATES, seed_templates
from tests.conftest import free_port, scratch_dir
from tests.e2e.harness import run_polydub as polydub
from tests.e2e.test_cli_dub import PORTS, _processes_under
from tests.hub import fixtures
from tests.hub.fixtures import FakeHub

pytestmark = pytest.mark.e2e

fake_hub = fixtures.fake_hub  # the session's fake Hub, found by pytest under this name


@dataclass(frozen=True)
class HubStack:
    root: Path
    env: dict[str, str]
    up: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def hub_stack(fake_hub: FakeHub) -> Iterator[HubStack]:
    """``polydub stack up`` on a model repository without weights (a fresh clone's) with the Hub
    answering, no token."""
    root = scratch_dir("polydub-hub-")
    seed_templates(root / "model_repository")
    root.chmod(0o755)  # PostgreSQL runs unprivileged under root and must traverse the path
    env = {k: v for k, v in fake_hub.env(root, token=None).items() if not k.startswith("POLYDUB_")}
    env |= {
        "POLYDUB_STACK_DIR": str(root / "stack"),
        "POLYDUB_MODEL_REPOSITORY": str(root / "model_repository"),
        "POLYDUB_MMS_TTS_LANGUAGES": "spa",  # one voice keeps the export short
        "COLUMNS": "200",
    }
    env |= {f"POLYDUB_{name}": str(free_port()) for name in PORTS}
    try:
        up = polydub("stack", "up", env=env, cwd=root)
        yield HubStack(root, env, up)
    finally:
        down = polydub("stack", "down", env=env, cwd=root)
        assert down.returncode == 0, down.stderr
        assert _processes_under(root) == []
        shutil.rmtree(root, ignore_errors=True)


def test_stack_up_exports_the_ungated_defaults_from_the_hub(
    hub_stack: HubStack, fake_hub: FakeHub
) -> None:
    assert hub_stack.up.returncode == 0, hub_stack.up.stdout + hub_stack.up.stderr
    assert "Traceback" not in hub_stack.up.stdout + hub_stack.up.stderr
    manifest = read_manifest(hub_stack.root / "model_repository")
    whisper = manifest.models["whisper"]
    assert (whisper.checkpoint, whisper.revision) == (
        "openai/whisper-base",
        fake_hub.commit("openai/whisper-base"),
    )
    assert manifest.models["nllb"].checkpoint == "facebook/nllb-200-distilled-600M"
    assert manifest.models["mms_tts_spa"].revision == fake_hub.commit("facebook/mms-tts-spa")
    assert manifest.models["speaker_embedding"].checkpoint == (
        "pyannote/wespeaker-voxceleb-resnet34-LM"
    )
    assert "pyannote_segmentation" not in manifest.models  # gated, and no token
    assert manifest.random_families() == []


def test_dub_runs_end_to_end_on_the_hub_checkpoints(hub_stack: HubStack) -> None:
    assert hub_stack.up.returncode == 0
    sample = hub_stack.root / "sample.mp4"
    made = polydub("sample", "make", str(sample), env=hub_stack.env, cwd=hub_stack.root)
    assert made.returncode == 0, made.stderr
    out = hub_stack.root / "out"
    dubbed = polydub(
        "dub", str(sample), "--to", "spa", "--out", str(out), env=hub_stack.env, cwd=hub_stack.root
    )
    assert dubbed.returncode == 0, dubbed.stdout + dubbed.stderr
    assert re.search(r"model whisper: openai/whisper-base \(real\)", dubbed.stdout), dubbed.stdout
    assert (out / "spa" / "sample.spa.mp4").stat().st_size > 0
    assert (out / "spa" / "sample.spa.srt").is_file()


def _export(fake_hub: FakeHub, home: Path, token: str | None, *args: str) -> tuple[int, str]:
    done = polydub(
        "models",
        "export",
        "--preset",
        "auto",
        "--repository",
        str(home / "repo"),
        "--templates",
        str(TEMPLATES),
        *args,
        env=fake_hub.env(home, token=token),
        cwd=home,
    )
    return done.returncode, done.stdout + done.stderr


def test_a_refused_gated_model_leaves_the_defaults_working(fake_hub: FakeHub) -> None:
    home = scratch_dir("polydub-gated-")
    try:
        code, output = _export(fake_hub, home, "hf_terms_not_accepted", "--family", "diarization")
        assert code == 0, output
        assert "pyannote/segmentation-3.0 is gated" in output and "left out" in output
        assert list(read_manifest(home / "repo").models) == ["speaker_embedding"]

        code, output = _export(fake_hub, home, fake_hub.token, "--family", "diarization")
        assert code == 0, output  # terms accepted: the gated model joins by itself
        assert sorted(read_manifest(home / "repo").models) == [
            "pyannote_segmentation",
            "speaker_embedding",
        ]
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("segmentation=pyannote/segmentation-3.0", "pyannote/segmentation-3.0 is gated"),
        ("nllb=facebook/no-such-model", "facebook/no-such-model does not exist on the Hub"),
        ("whisper=openai/whisper-base@no-such-branch", "no such revision on the Hub"),
        ("nllb=openai/whisper-base", "is a 'whisper' checkpoint, not 'm2m_100'"),
    ],
)
def test_foreseeable_mistakes_are_one_line_and_write_nothing(
    fake_hub: FakeHub, choice: str, message: str
) -> None:
    home = scratch_dir("polydub-choice-")
    try:
        code, output = _export(fake_hub, home, None, "--model", choice)
        assert code == 2, output
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], output
        assert "Traceback" not in output
        assert not (home / "repo").exists() or not any((home / "repo").iterdir())
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert os.path.exists(fake_hub.root)
