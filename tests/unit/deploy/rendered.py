"""Helpers over rendered chart objects, shared by the chart tests of issue #15."""

from __future__ import annotations

import base64
from typing import Any

from polydub.deploy import chart
from polydub.deploy.chart import CHART_DIR, Manifest

PRODUCTION = chart.load_values(CHART_DIR / "values-production.yaml")
DEFAULTS = chart.load_values(CHART_DIR / "values.yaml")


def find(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    matches = [m.body for m in manifests if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def kinds(manifests: list[Manifest], kind: str) -> list[dict[str, Any]]:
    return [m.body for m in manifests if m.kind == kind]


def container(manifests: list[Manifest], name: str) -> dict[str, Any]:
    spec = find(manifests, "Deployment", name)["spec"]["template"]["spec"]
    first: dict[str, Any] = spec["containers"][0]
    return first


def secret_data(manifests: list[Manifest], name: str) -> dict[str, str]:
    data = find(manifests, "Secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def notes(values: dict[str, Any], release: str, namespace: str) -> str:
    """NOTES.txt as `helm install` prints it (polydub.deploy.chart.render leaves it out)."""
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as loaded:
        rendered = loaded.render(values, name=release, namespace=namespace, is_install=True)
    return rendered["polydub/templates/NOTES.txt"]
