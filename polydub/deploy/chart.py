"""Lint, render and validate the Helm chart offline: no helm binary, no cluster.

Helm's own Go library does the linting and rendering (``helm-python-sdk`` binds it), so what is
checked is what ``helm install`` would send. Every rendered object is then validated against the
Kubernetes JSON schemas that ``kubernetes-validate`` ships (strict: unknown fields are errors),
and custom resources against the schemas in :mod:`polydub.deploy.crd_schemas`. An object of a
kind that no schema covers is reported, never skipped.

    python -m polydub.deploy.chart -f k8s/polydub/values-production.yaml

These tools are dev dependencies; they are imported when used.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from polydub.deploy.crd_schemas import CRD_SCHEMAS

# polydub/deploy/chart.py -> the source checkout's k8s/polydub.
CHART_DIR = Path(__file__).resolve().parents[2] / "k8s" / "polydub"
# The oldest version Chart.yaml's kubeVersion admits and the newest kubernetes-validate knows.
KUBE_VERSIONS: tuple[str, ...] = ("1.29.0", "1.37.0")


class ChartError(Exception):
    """The chart does not lint, render or validate; the message lists every problem."""


@dataclass(frozen=True)
class Manifest:
    """One rendered Kubernetes object and the template it came from."""

    template: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name", ""))

    @property
    def hook(self) -> str | None:
        annotations = self.body.get("metadata", {}).get("annotations") or {}
        value = annotations.get("helm.sh/hook")
        return None if value is None else str(value)

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.template})"


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's ``-f a.yaml -f b.yaml``: maps merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_values(*files: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ChartError(f"{path}: values must be a mapping")
        values = merge_values(values, loaded)
    return merge_values(values, overrides or {})


def lint(
    values: dict[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    kube_version: str = KUBE_VERSIONS[-1],
) -> list[str]:
    """``helm lint --strict``: warnings and errors (info messages such as "icon is recommended"
    are not problems)."""
    import helm_python as helm

    report = helm.lint(
        chart_dir, values, strict=True, namespace="polydub", kube_version=f"v{kube_version}"
    )
    problems = [
        f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m["severity"] >= 2
    ]
    return problems + [str(e) for e in report.get("errors", []) if str(e) not in str(problems)]


def render(
    values: dict[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    release: str = "polydub",
    namespace: str = "polydub",
    is_upgrade: bool = False,
) -> list[Manifest]:
    """``helm template``: every object of every template, hooks included, in template order."""
    import helm_python as helm

    try:
        with helm.Chart.load(chart_dir) as chart:
            rendered = chart.render(
                values,
                name=release,
                namespace=namespace,
                is_install=not is_upgrade,
                is_upgrade=is_upgrade,
            )
    except helm.HelmError as e:  # a template's fail, a YAML or values error
        raise ChartError(str(e)) from e
    manifests: list[Manifest] = []
    for template in sorted(rendered):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for body in yaml.safe_load_all(rendered[template]):
            if body:
                manifests.append(Manifest(template, body))
    return manifests


def _schema_version(kube_version: str) -> str:
    """The newest schema set kubernetes-validate ships at or below this Kubernetes version."""
    import kubernetes_validate.utils as kv

    wanted = kv.major_minor(kube_version.removeprefix("v"))
    versions = [v for v in kv.all_versions() if _minor_key(kv.major_minor(v)) <= _minor_key(wanted)]
    if not versions:
        raise ChartError(f"kubernetes-validate has no schemas for Kubernetes {kube_version}")
    return str(versions[-1])


def _minor_key(major_minor: str) -> tuple[int, ...]:
    return tuple(int(part) for part in major_minor.split("."))


@lru_cache(maxsize=4)
def _registry(schema_version: str) -> Any:
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    definitions = kv.schema_contents(
        f"kubernetes-json-schema/v{schema_version}-local-strict/_definitions.json", schema_version
    )
    return Resource.from_contents(definitions) @ Registry()


@lru_cache(maxsize=256)
def _validator(schema_version: str, api_version: str, kind: str) -> Any:
    """A strict validator for one kind, built once (kubernetes-validate's own schema files and
    naming, kept in memory: its validate() re-reads the shared definitions for every object)."""
    import jsonschema
    import kubernetes_validate.utils as kv

    schema = CRD_SCHEMAS.get((api_version, kind))
    if schema is None:
        # rbac.authorization.k8s.io/v1 -> rbac-v1, as kubernetes-validate names its files
        group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = kv.schema_contents(
                f"kubernetes-json-schema/v{schema_version}-local-strict/"
                f"{kind.lower()}-{group}.json",
                schema_version,
            )
        except FileNotFoundError:
            return None
    return jsonschema.Draft202012Validator(schema, registry=_registry(schema_version))


def validate(manifests: Iterable[Manifest], kube_version: str = KUBE_VERSIONS[-1]) -> list[str]:
    """Every object against its schema, strictly (unknown fields are errors); returns every
    problem found (empty when all are valid). A kind with no schema is a problem."""
    version = _schema_version(kube_version)
    problems: list[str] = []
    for manifest in manifests:
        api_version = str(manifest.body.get("apiVersion", ""))
        validator = _validator(version, api_version, manifest.kind)
        if validator is None:
            problems.append(
                f"{manifest}: no schema for {api_version} {manifest.kind} (Kubernetes {version})"
            )
            continue
        problems += [
            f"{manifest}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in sorted(
                validator.iter_errors(manifest.body), key=lambda e: list(map(str, e.absolute_path))
            )
        ]
    return problems


def check(
    values: dict[str, Any] | None = None,
    *,
    chart_dir: Path = CHART_DIR,
    kube_versions: Sequence[str] = KUBE_VERSIONS,
) -> list[Manifest]:
    """Lint, render (install and upgrade) and validate for each Kubernetes version; raise
    :class:`ChartError` listing every problem, else return the install's manifests."""
    problems: list[str] = []
    installed = render(values, chart_dir=chart_dir)
    upgraded = render(values, chart_dir=chart_dir, is_upgrade=True)
    for version in kube_versions:
        problems += [
            f"lint (k8s {version}): {p}"
            for p in lint(values, chart_dir=chart_dir, kube_version=version)
        ]
        for label, manifests in (("install", installed), ("upgrade", upgraded)):
            problems += [f"{label} (k8s {version}): {p}" for p in validate(manifests, version)]
    if problems:
        raise ChartError("\n".join(problems))
    return installed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-f", "--values", type=Path, action="append", default=[])
    parser.add_argument("--chart", type=Path, default=CHART_DIR)
    parser.add_argument("--kube-version", action="append", help="default: 1.29.0 and 1.37.0")
    args = parser.parse_args(argv)
    try:
        manifests = check(
            load_values(*args.values),
            chart_dir=args.chart,
            kube_versions=args.kube_version or KUBE_VERSIONS,
        )
    except ChartError as e:
        print(e, file=sys.stderr)
        return 1
    for manifest in manifests:
        print(f"ok  {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
