"""docker-bake.hcl cannot be built here (no Docker engine): it is parsed (a minimal HCL reader:
blocks, string / list / map attributes) and checked against the package version, the
Dockerfiles it builds and the chart's default model repository."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from polydub.deploy import chart
from polydub.export.spec import Preset, Target
from polydub.version import __version__

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
BAKE = ROOT / "docker-bake.hcl"


@dataclass(frozen=True)
class Block:
    kind: str  # variable, target, group, function
    name: str
    attributes: dict[str, str]  # name -> the value's source text


def _skip_string(text: str, i: int) -> int:
    """The index after the string literal that starts at text[i] (a double quote)."""
    i += 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _matching(text: str, i: int) -> int:
    """The index after the bracket that closes the one at text[i], strings and comments skipped."""
    depth = 0
    while True:
        c = text[i]
        if c == '"':
            i = _skip_string(text, i)
            continue
        if c == "#":
            i = text.index("\n", i)
            continue
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def _attributes(body: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    i = 0
    pattern = re.compile(r'\s*(?:#[^\n]*\n\s*)*("[^"]+"|[A-Za-z][\w-]*)\s*=\s*')
    while (m := pattern.match(body, i)) and m.end() < len(body):
        start = m.end()
        if body[start] in "{[":
            end = _matching(body, start)
        elif body[start] == '"' and "\n" not in body[start : _skip_string(body, start)]:
            end = _skip_string(body, start)
            # an expression may go on after the string (a conditional): to the end of the line
            end = body.index("\n", end) if "\n" in body[end:] else len(body)
        else:
            end = body.index("\n", start) if "\n" in body[start:] else len(body)
        attributes[m.group(1)] = body[start:end].strip()
        i = end
    assert not body[i:].strip(), f"unparsed: {body[i:]!r}"
    return attributes


def parse_bake(text: str) -> list[Block]:
    blocks: list[Block] = []
    i = 0
    header = re.compile(r'\s*(?:#[^\n]*\n\s*)*(\w+)\s+"([^"]+)"\s*(?=\{)')
    while m := header.match(text, i):
        end = _matching(text, m.end())
        blocks.append(Block(m.group(1), m.group(2), _attributes(text[m.end() + 1 : end - 1])))
        i = end
    assert not re.sub(r"#[^\n]*", "", text[i:]).strip(), f"unparsed: {text[i:][:80]!r}"
    return blocks


def string(value: str) -> str:
    assert value.startswith('"') and value.endswith('"'), value
    parsed: str = json.loads(value)
    return parsed


def strings(value: str) -> list[str]:
    """A list literal of strings (or of other expressions, as their text)."""
    assert value.startswith("[") and value.endswith("]"), value
    items = [item.strip() for item in re.split(r",(?![^(]*\))", value[1:-1]) if item.strip()]
    return [string(item) if item.startswith('"') else item for item in items]


def mapping(value: str) -> dict[str, str]:
    assert value.startswith("{") and value.endswith("}"), value
    return {k.strip('"'): v for k, v in _attributes(value[1:-1]).items()}


@pytest.fixture(scope="module")
def bake() -> dict[tuple[str, str], Block]:
    blocks = parse_bake(BAKE.read_text())
    by_key = {(b.kind, b.name): b for b in blocks}
    assert len(by_key) == len(blocks), "a block is defined twice"
    return by_key


def instructions(dockerfile: str) -> list[dict[str, str]]:
    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / dockerfile).read_bytes()))
    return list(parser.structure)


def stages(dockerfile: str) -> dict[str, list[dict[str, str]]]:
    """Stage name -> its instructions."""
    found: dict[str, list[dict[str, str]]] = {}
    current: list[dict[str, str]] = []
    for ins in instructions(dockerfile):
        if ins["instruction"] == "FROM":
            current = []
            found[ins["value"].split()[-1]] = current
        current.append(ins)
    return found


def test_parser_reads_blocks_attributes_and_refuses_garbage() -> None:
    (block,) = parse_bake('target "x" {\n  tags = ["a", f("b", V)]\n  args = { A = "1" }\n}\n')
    assert (block.kind, block.name) == ("target", "x")
    assert strings(block.attributes["tags"]) == ["a", 'f("b", V)']
    assert mapping(block.attributes["args"]) == {"A": '"1"'}
    with pytest.raises(AssertionError, match="unparsed"):
        parse_bake('target "x" {\n}\nstray\n')


def test_version_default_is_the_package_version(bake: dict[tuple[str, str], Block]) -> None:
    assert string(bake["variable", "VERSION"].attributes["default"]) == __version__
    for name in ("REGISTRY", "PRESET", "REVISION"):
        assert ("variable", name) in bake
    assert Preset(string(bake["variable", "PRESET"].attributes["default"])) is Preset.SMALL
    # every image is tagged with the version, under REGISTRY when one is given
    tag = bake["function", "tag"].attributes["result"]
    assert '"${REGISTRY}/${name}:${version}"' in tag and '"${name}:${version}"' in tag
    assert strings(bake["target", "api"].attributes["tags"]) == ['tag("polydub", VERSION)']
    assert strings(bake["target", "triton"].attributes["tags"]) == [
        'tag("polydub-triton", VERSION)'
    ]


def test_default_group_builds_the_api_and_the_weightless_triton(
    bake: dict[tuple[str, str], Block],
) -> None:
    assert strings(bake["group", "default"].attributes["targets"]) == ["api", "triton"]
    common = bake["target", "_common"].attributes
    assert string(common["context"]) == "."
    assert mapping(common["labels"])["org.opencontainers.image.version"] == "VERSION"
    for name in ("api", "triton", "triton-baked"):
        target = bake["target", name].attributes
        assert strings(target["inherits"]) == ["_common"]
        assert (ROOT / string(target["dockerfile"])).is_file()
    assert string(bake["target", "api"].attributes["dockerfile"]) == "Dockerfile.api"


def test_triton_target_replaces_the_models_stage_with_an_empty_repository(
    bake: dict[tuple[str, str], Block],
) -> None:
    triton = bake["target", "triton"].attributes
    assert string(triton["dockerfile"]) == "Dockerfile.triton"
    assert "args" not in triton  # MODELS would not matter: the stage is replaced
    contexts = mapping(triton["contexts"])
    assert {k: string(v) for k, v in contexts.items()} == {"models": "target:models-none"}
    # "models" is the stage the runtime copies the repository from, at this path
    dockerfile = stages("Dockerfile.triton")
    runtime = dockerfile["runtime"]
    copies = [i["value"] for i in runtime if i["instruction"] == "COPY"]
    assert "--from=models /src/model_repository /models" in copies
    assert "models" in dockerfile
    inline = string(bake["target", "models-none"].attributes["dockerfile-inline"])
    assert inline.splitlines() == ["FROM scratch", "WORKDIR /src/model_repository"]
    # and the chart reads the models from S3 by default, not from the image
    values = chart.load_values(chart.CHART_DIR / "values.yaml")
    assert values["triton"]["modelRepository"] == ""


def test_baked_triton_targets_export_each_target_and_say_the_licence(
    bake: dict[tuple[str, str], Block],
) -> None:
    baked = bake["target", "triton-baked"].attributes
    matrix = mapping(baked["matrix"])
    assert {Target(v) for v in strings(matrix["variant"])} == set(Target)
    assert string(baked["name"]) == "triton-baked-${variant}"
    args = mapping(baked["args"])
    assert args == {"MODELS": '"export"', "TARGET": "variant", "PRESET": "PRESET"}
    dockerfile = stages("Dockerfile.triton")
    declared = {
        i["value"].split("=")[0]
        for i in instructions("Dockerfile.triton")
        if i["instruction"] == "ARG"
    }
    assert set(args) <= declared
    assert f"models-{string(args['MODELS'])}" in dockerfile
    assert strings(baked["tags"]) == ['tag("polydub-triton", "${VERSION}-${PRESET}-${variant}")']
    label = string(mapping(baked["labels"])["org.opencontainers.image.description"])
    assert "CC-BY-NC-4.0" in label


def test_deployment_docs_build_with_bake_and_warn_about_baked_weights() -> None:
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert "docker buildx bake" in docs
    assert "CC-BY-NC-4.0" in docs and "redistribut" in docs
    assert "triton-baked" in docs and "s3://" in docs
