"""Choosing checkpoints (``--model``), checking them before anything is written, and the
export's staging, swap and manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from polydub.cli import app
from polydub.errors import ConfigurationError
from polydub.export.plan import ModelChoice, make_plan
from polydub.export.run import export_all
from polydub.export.spec import RANDOM, Preset, Target
from polydub.manifest import MANIFEST_MODEL, manifest_path, read_manifest
from tests.checkout import TEMPLATES

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def test_parse_choices() -> None:
    assert ModelChoice.parse("whisper=openai/whisper-large-v3-turbo@abc123") == ModelChoice(
        "whisper", "openai/whisper-large-v3-turbo", "abc123"
    )
    assert ModelChoice.parse("nllb=/srv/nllb-1.3B") == ModelChoice("nllb", "/srv/nllb-1.3B")
    assert ModelChoice.parse("segmentation=random").key == "pyannote_segmentation"
    for bad in ("whisper", "=x", "whisper="):
        with pytest.raises(ConfigurationError, match="KEY=REF"):
            ModelChoice.parse(bad)


def test_defaults_need_no_token() -> None:
    small = make_plan(Preset.SMALL).checkpoints()
    assert "pyannote_segmentation" not in small
    assert not any(c.gated for c in small.values())
    assert small["speaker_embedding"].ref == "pyannote/wespeaker-voxceleb-resnet34-LM"
    tiny = make_plan(Preset.TINY).checkpoints()
    assert all(c.random for m, c in tiny.items() if m not in ("silero_vad", "gender"))
    # Named, the gated model joins; with a token it joins by default.
    named = make_plan(Preset.SMALL, [ModelChoice.parse("segmentation=pyannote/segmentation-3.0")])
    assert named.checkpoints()["pyannote_segmentation"].gated


def test_choices_override_and_add(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan(
        Preset.TINY,
        [
            ModelChoice.parse("whisper=openai/whisper-large-v3-turbo@v1"),
            ModelChoice.parse("mms_tts_ita=facebook/mms-tts-ita"),
        ],
        families=["whisper", "mms_tts"],
    )
    chosen = plan.checkpoints()
    assert (chosen["whisper"].ref, chosen["whisper"].revision) == (
        "openai/whisper-large-v3-turbo",
        "v1",
    )
    assert chosen["mms_tts_ita"].ref == "facebook/mms-tts-ita"
    assert chosen["mms_tts_spa"].ref == RANDOM
    with pytest.raises(ConfigurationError, match="no such model"):
        make_plan(Preset.TINY, [ModelChoice.parse("bert=google/bert")])
    with pytest.raises(ConfigurationError, match="fixed"):
        make_plan(Preset.TINY, [ModelChoice.parse("silero_vad=/x")])
    with pytest.raises(ConfigurationError, match="unknown model family"):
        make_plan(Preset.TINY, families=["nope"])


def _snapshot(repository: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(repository)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in repository.rglob("*")
        if p.is_file()
    }


def test_export_stages_swaps_and_writes_the_manifest(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    plan = make_plan(Preset.TINY, families=["vad", "gender"])
    result = export_all(plan, Target.CPU, repository, TEMPLATES)
    assert sorted(result.manifest.models) == ["gender", "silero_vad"]
    manifest = read_manifest(repository)
    vad = manifest.models["silero_vad"]
    assert (vad.family, vad.random, vad.precision) == ("vad", False, "fp32")
    assert vad.checkpoint.startswith("faster-whisper:") and vad.parity["silero_vad"] < 1e-3
    assert (repository / MANIFEST_MODEL / "config.pbtxt").is_file()
    assert (repository / MANIFEST_MODEL / "1" / "model.py").is_file()
    assert json.loads(manifest_path(repository).read_text())["format"] == 1
    # NLLB's graphs are files of its python model: one served model, as random as they are.
    nllb = export_all(make_plan(Preset.TINY, families=["nllb"]), Target.CPU, repository, TEMPLATES)
    assert {m.name: m.random for m in nllb.manifest.models.values() if m.family == "nllb"} == {
        "nllb": True,
    }
    # Nothing is left beside the repository: no staging or trash folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]

    # A failing export leaves the repository as it was, and the error is one clear line.
    before = _snapshot(repository)
    not_nllb = tmp_path / "bert"
    not_nllb.mkdir()
    (not_nllb / "config.json").write_text(json.dumps({"model_type": "bert"}))
    bad = make_plan(Preset.TINY, [ModelChoice.parse(f"nllb={not_nllb}")], families=["nllb"])
    with pytest.raises(ConfigurationError, match="'bert' checkpoint, not 'm2m_100'"):
        export_all(bad, Target.CPU, repository, TEMPLATES)
    missing = make_plan(Preset.TINY, [ModelChoice.parse("whisper=/no/such/dir")], ["whisper"])
    with pytest.raises(ConfigurationError, match="no such directory"):
        export_all(missing, Target.CPU, repository, TEMPLATES)
    assert _snapshot(repository) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "repo"]


def test_the_committed_files_come_from_the_templates(tmp_path: Path) -> None:
    """Configs and python models are copied from the templates (by default the repository
    itself); a model that ends without a config is an error that names the fix, and nothing
    is written."""
    plan = make_plan(Preset.TINY, families=["vad"])
    empty = tmp_path / "empty"
    with pytest.raises(ConfigurationError, match="a copy of polydub's model_repository") as raised:
        export_all(plan, Target.CPU, empty)
    assert raised.value.code == "model_templates_missing" and not empty.exists()

    partial = tmp_path / "partial"
    shutil.copytree(TEMPLATES / MANIFEST_MODEL, partial / MANIFEST_MODEL)
    with pytest.raises(ConfigurationError, match=r"no config\.pbtxt for silero_vad") as raised:
        export_all(plan, Target.CPU, partial)
    assert raised.value.code == "model_config_missing"
    assert sorted(p.name for p in partial.iterdir()) == [MANIFEST_MODEL]

    (partial / "silero_vad" / "configs").mkdir(parents=True)
    shutil.copy2(TEMPLATES / "silero_vad" / "config.pbtxt", partial / "silero_vad")
    (partial / "silero_vad" / "configs" / "gpu.pbtxt").write_text("# this deployment's own\n")
    export_all(plan, Target.CPU, partial)  # into the templates themselves: kept as they are
    assert (
        partial / "silero_vad" / "configs" / "gpu.pbtxt"
    ).read_text() == "# this deployment's own\n"
    assert (partial / "silero_vad" / "1" / "model.onnx").is_file()
    assert (partial / MANIFEST_MODEL / "1" / "model.py").is_file()


def test_cli_prints_one_line_for_a_foreseeable_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "models",
            "export",
            "--preset",
            "tiny",
            "--family",
            "nllb",
            "--model",
            f"nllb={tmp_path / 'nowhere'}",
            "--repository",
            str(tmp_path / "repo"),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"error: {tmp_path / 'nowhere'}: no such directory" in result.output
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_a_checkpoint_too_large_for_this_machine_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polydub.export import hub

    local = tmp_path / "whisper"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (local / "model.safetensors").write_bytes(b"\0" * 4096)
    choice = [ModelChoice.parse(f"whisper={local}")]
    plan = make_plan(Preset.TINY, choice, families=["whisper"])
    monkeypatch.setattr(hub, "available_memory", lambda: 1024)
    with pytest.raises(ConfigurationError, match=r"needs about .* GiB of memory") as raised:
        export_all(plan, Target.CPU, tmp_path / "repo", TEMPLATES)
    assert raised.value.code == "checkpoint_too_large"
    monkeypatch.setattr(hub, "available_memory", lambda: 1 << 40)
    monkeypatch.setattr(
        "polydub.export.hub.shutil.disk_usage",
        lambda _: type("U", (), {"free": 100, "total": 1, "used": 0})(),
    )
    with pytest.raises(ConfigurationError, match="of disk") as raised:
        export_all(plan, Target.CPU, tmp_path / "repo", TEMPLATES)
    assert raised.value.code == "no_disk_space"
    assert not (tmp_path / "repo").exists()


def test_offline_auto_serves_no_random_separation() -> None:
    # The Hub cannot be reached here: auto means real Whisper and random weights elsewhere, but
    # random separation would damage the background more than ducking, so none is served.
    offline = make_plan(Preset.AUTO).checkpoints()
    assert "separation" not in offline and not offline["whisper"].random
    chosen = make_plan(Preset.AUTO, [ModelChoice.parse("separation=/srv/separation")])
    assert chosen.checkpoints()["separation"].ref == "/srv/separation"
