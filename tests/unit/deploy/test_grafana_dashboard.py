"""k8s/grafana-dashboard.json: a well-formed Grafana dashboard whose every PromQL query names
series polydub exports, grouped by labels those series carry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from polydub.telemetry import metrics

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).parents[3] / "k8s" / "grafana-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
# Labels Prometheus adds to every scraped series (app_kubernetes_io_instance: the release, copied
# from the pod label by the chart's ServiceMonitor), and the histogram bucket bound.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "le", "app_kubernetes_io_instance"}
# The selector every query carries: one release in one namespace (the dashboard's variables).
SCOPE = {"namespace": '="$namespace"', "app_kubernetes_io_instance": '=~"$release"'}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}


def exported() -> dict[str, set[str]]:
    """Every sample name the telemetry package exposes, with the labels it carries."""
    labels: dict[str, set[str]] = {}
    for value in metrics.every_metric():  # created on first use: make them all
        if isinstance(value, MetricWrapperBase):
            names = set(value._labelnames)  # no public accessor; stable across versions
            family = next(iter(value.describe()))
            for suffix in SUFFIXES[family.type]:
                labels[family.name + suffix] = names
    # The Triton statistics collector: its families, labelled by model.
    for family in metrics.TRITON_STATISTICS.collect():
        labels[family.name + "_total"] = {"model"}
    return labels


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def series_and_groupings(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, labels in matchers, labels in by/without clauses) of one query."""
    matchers = {
        name
        for body in re.findall(r"\{([^}]*)\}", expr)
        for name in re.findall(r"(\w+)\s*[!=]", body)
    }
    grouped = {
        label.strip()
        for body in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in body.split(",")
    }
    bare = re.sub(r'"[^"]*"', "", expr)  # strings
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)  # matchers and ranges
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", bare)
    names = {
        token
        for token in re.findall(r"\b([A-Za-z_:][\w:]*)\b(?!\s*\()", bare)
        if token.lower() not in KEYWORDS and not token.startswith("$")
    }
    return names, matchers, grouped


def test_dashboard_model() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            assert [t["refId"] for t in panel["targets"]] == [
                chr(65 + i) for i in range(len(panel["targets"]))
            ]
    titles = " | ".join(p["title"] for p in panels(dashboard["panels"]))
    for topic in ("Job state", "Queue depth", "Stage duration p50", "Stage duration p95"):
        assert topic in titles
    for topic in ("Triton request latency", "Batch size", "API latency", "API error rate"):
        assert topic in titles


def test_every_query_names_exported_series() -> None:
    series = exported()
    used: set[str] = set()
    for title, expr in expressions():
        names, matchers, grouped = series_and_groupings(expr)
        assert names, (title, expr)
        unknown = names - series.keys()
        assert not unknown, f"{title}: {sorted(unknown)} not exported ({expr})"
        carried = set().union(*(series[name] for name in names)) | TARGET_LABELS
        assert matchers <= carried, f"{title}: matchers {sorted(matchers - carried)}"
        assert grouped <= carried, f"{title}: grouped by {sorted(grouped - carried)}"
        used |= names
    # Each series family the code exports is on the dashboard.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    for name in series:
        assert re.sub(r"_(total|bucket|sum|count)$", "", name) in families, name


def test_parser_catches_a_wrong_name() -> None:
    names, matchers, grouped = series_and_groupings(
        'histogram_quantile(0.95, sum by (le, modle) (rate(polydub_stage_seconds_bucket{stage="x"}[5m])))'
    )
    assert names == {"polydub_stage_seconds_bucket"}
    assert matchers == {"stage"} and grouped == {"le", "modle"}
    assert "polydub_stage_seconds_bucket" not in exported()


def test_registry_serves_what_the_dashboard_expects() -> None:
    # The names above come from the same objects the default registry serves on /metrics.
    described = {family.name for collector in [REGISTRY] for family in collector.collect()}
    for family in (
        "polydub_stage_duration_seconds",
        "polydub_queue_depth",
        "polydub_http_requests",
    ):
        assert family in described


MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*("[^"]*")')


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """Every series selector of a query: (metric name, {label: operator + quoted value})."""
    bare = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    return [
        (name, {label: op + value for label, op, value in MATCHER.findall(body)})
        for name, body in re.findall(r"\b(polydub_\w+)(\{[^}]*\})?", bare)
    ]


def test_namespace_and_release_variables_scope_every_panel_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("namespace", "release"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        assert var["definition"] == var["query"]["query"]
        assert var["definition"].startswith('label_values({__name__=~"polydub_.+"')
    assert variables["namespace"]["definition"].endswith(", namespace)")
    # the release list follows the namespace chosen, and "All" also matches series without the label
    release = variables["release"]
    assert 'namespace="$namespace"' in release["definition"]
    assert release["definition"].endswith(", app_kubernetes_io_instance)")
    assert release["includeAll"] is True and release["allValue"] == ".*"
    checked = 0
    for title, expr in expressions():
        found = selectors(expr)
        assert found, (title, expr)
        for name, matchers in found:
            for label, matcher in SCOPE.items():
                assert matchers.get(label) == matcher, f"{title}: {name} lacks {label}{matcher}"
            checked += 1
    assert checked >= len(expressions())


def test_scope_check_catches_an_unscoped_selector() -> None:
    ((_, matchers),) = selectors('sum(rate(polydub_http_requests_total{status=~"5.."}[5m]))')
    assert matchers == {"status": '=~"5.."'}
    ((_, bare),) = selectors("sum(polydub_jobs_in_flight)")
    assert bare == {}
