"""``--model separation=HUB_ID`` for HT-Demucs: a Hub repository holding one demucs ``.th``
exports as ``separation_htdemucs`` (through the fake Hub, in a fresh process: huggingface_hub
reads ``HF_ENDPOINT`` at import); several need ``owner/name:file.th``; a mask-net repository
keeps the mask-net path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polydub.export import htdemucs
from polydub.manifest import read_manifest
from tests.checkout import TEMPLATES
from tests.hub import fixtures
from tests.hub.build import HTDEMUCS, HTDEMUCS_FILE, HTDEMUCS_SECONDS
from tests.hub.fixtures import FakeHub
from tests.hub.server import DEFAULT_TOKEN, FakeHubServer

pytestmark = pytest.mark.unit
fake_hub = fixtures.fake_hub  # pytest finds fixtures by their name in the test module

POLYDUB = Path(sys.executable).parent / "polydub"
# Resolves each ref given on the command line as the export does; prints one JSON line per ref:
# the file found (None: not a demucs checkpoint) or the explained error's code and message.
RESOLVE = """
import json, sys
from polydub.export.hub import explain
from polydub.export.htdemucs import checkpoint_file
from polydub.export.plan import ModelChoice
from polydub.export.spec import Checkpoint
for ref in sys.argv[1:]:
    choice = ModelChoice.parse(f"separation={ref}")
    try:
        found = checkpoint_file(Checkpoint(choice.ref, "MIT", revision=choice.revision))
        print(json.dumps({"file": None if found is None else str(found)}))
    except Exception as exc:
        error = explain(exc)
        assert error is not None, exc
        print(json.dumps({"code": error.code, "message": error.message}))
"""


def test_a_hub_id_holding_one_th_file_exports_as_htdemucs(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    env = fake_hub.env(tmp_path)
    result = subprocess.run(
        [
            str(POLYDUB),
            "models",
            "export",
            "--preset",
            "tiny",
            "--family",
            "separation",
            "--model",
            f"separation={HTDEMUCS}",
            "--repository",
            str(repository),
            "--templates",
            str(TEMPLATES),
        ],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    served = read_manifest(repository).models
    assert set(served) >= {htdemucs.MODEL} and "separation" not in served
    model = served[htdemucs.MODEL]
    assert (model.family, model.checkpoint, model.license) == ("separation", HTDEMUCS, "MIT")
    assert 0 <= model.parity[htdemucs.MODEL] <= htdemucs.FP32_RTOL  # checked against PyTorch
    assert (repository / htdemucs.MODEL / "1" / "model.onnx").is_file()
    # Downloaded into the Hub cache, at the commit the listing saw.
    cached = list((tmp_path / "hf-cache").rglob(HTDEMUCS_FILE))
    commit = fake_hub.commit(HTDEMUCS)
    assert [p.parent.name for p in cached] == [commit]
    assert cached[0].read_bytes() == (fake_hub.root / HTDEMUCS / HTDEMUCS_FILE).read_bytes()


def _mask_net(out: Path) -> None:
    from safetensors.torch import save_file

    from polydub.export.separation import MODEL_TYPE, MaskNetConfig, build

    out.mkdir(parents=True)
    config = MaskNetConfig()
    (out / "config.json").write_text(
        json.dumps({"model_type": MODEL_TYPE, "channels": 4, "blocks": 1, "bottleneck": 16})
    )
    save_file(build(config).state_dict(), str(out / "model.safetensors"))


def test_several_th_files_need_the_file_named_and_a_mask_net_keeps_its_path(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    root = tmp_path / "hub"
    tiny = fake_hub.root / HTDEMUCS / HTDEMUCS_FILE
    (root / "org" / "two").mkdir(parents=True)
    for name in ("htdemucs.th", "htdemucs_ft.th"):
        shutil.copyfile(tiny, root / "org" / "two" / name)
    (root / "org" / "two" / "nested").mkdir()  # only the root counts, as demucs lays them out
    shutil.copyfile(tiny, root / "org" / "two" / "nested" / "other.th")
    _mask_net(root / "org" / "mask-net")
    server = FakeHubServer(root, gated=frozenset()).start()
    try:
        env = fixtures.FakeHub(server.url, root, DEFAULT_TOKEN, server).env(tmp_path)
        refs = ["org/two", "org/two:htdemucs_ft.th", "org/mask-net", "org/nowhere"]
        result = subprocess.run(
            [sys.executable, "-c", RESOLVE, *refs],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # Offline, the cache stands for the listing: the one file fetched above is found.
        offline = subprocess.run(
            [sys.executable, "-c", RESOLVE, "org/two", "org/never-fetched"],
            env=env | {"HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert offline.returncode == 0, offline.stderr
    cached, never = (json.loads(x) for x in offline.stdout.splitlines())
    assert Path(cached["file"]).name == "htdemucs_ft.th" and never == {"file": None}
    ambiguous, named, mask_net, missing = (json.loads(x) for x in result.stdout.splitlines())
    assert ambiguous["code"] == "checkpoint_ambiguous"
    assert "htdemucs.th, htdemucs_ft.th" in ambiguous["message"]
    assert "org/two:htdemucs.th" in ambiguous["message"]  # the syntax that picks one
    assert "other.th" not in ambiguous["message"]
    assert Path(named["file"]).name == "htdemucs_ft.th"
    assert Path(named["file"]).read_bytes() == tiny.read_bytes()
    assert mask_net == {"file": None}  # config.json + model.safetensors: the mask-net path
    assert missing["code"] == "checkpoint_not_found"


def test_the_fake_hubs_htdemucs_is_the_tiny_architecture(fake_hub: FakeHub) -> None:
    files = set(fake_hub.server.repos[HTDEMUCS].files)
    assert files == {HTDEMUCS_FILE, "README.md", ".gitattributes"}
    model = htdemucs.load(fake_hub.root / HTDEMUCS / HTDEMUCS_FILE)
    assert model.channels == 4 and float(model.segment) == HTDEMUCS_SECONDS
