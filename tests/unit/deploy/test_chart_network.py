"""Nothing internal on the public Ingress (issue #15, item 3): /metrics and the readiness
details on their own port and Service, an optional ServiceMonitor, NetworkPolicy peers and
webhook egress from values (no namespace name assumed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from polydub.deploy import chart
from polydub.deploy.chart import Manifest
from tests.unit.deploy.rendered import DEFAULTS, PRODUCTION, container, find, kinds

pytestmark = pytest.mark.unit


# ---- item 3: nothing internal on the public Ingress --------------------------------------------


def test_metrics_and_readiness_are_on_their_own_port_and_service() -> None:
    manifests = chart.render({"api": {"metricsPort": 9300}})
    api = container(manifests, "polydub-api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": 8000, "metrics": 9300}
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["POLYDUB_API_METRICS_PORT"] == "9300" and env["POLYDUB_API_PORT"] == "8000"
    assert api["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "metrics"}
    pod = find(manifests, "Deployment", "polydub-api")["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/port"] == "9300"
    public = find(manifests, "Service", "polydub-api")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    internal = find(manifests, "Service", "polydub-api-metrics")
    assert internal["spec"]["clusterIP"] == "None"
    assert internal["spec"]["ports"] == [
        {"name": "metrics", "port": 9300, "targetPort": "metrics", "protocol": "TCP"}
    ]


def _ingress_backends(manifests: list[Manifest]) -> Iterator[dict[str, Any]]:
    for ingress in kinds(manifests, "Ingress"):
        spec = ingress["spec"]
        if "defaultBackend" in spec:
            yield spec["defaultBackend"]["service"]
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                yield path["backend"]["service"]


@pytest.mark.parametrize("values", [{}, PRODUCTION])
def test_ingress_routes_to_no_port_that_reaches_metrics(values: dict[str, Any]) -> None:
    manifests = chart.render(values)
    services = {s["metadata"]["name"]: s for s in kinds(manifests, "Service")}
    backends = list(_ingress_backends(manifests))
    assert backends == [{"name": "polydub-api", "port": {"name": "http"}}]
    for backend in backends:
        service = services[backend["name"]]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
        assert port["targetPort"] == "http"
        # no port of a routed Service leads to a metrics port
        assert all(p["targetPort"] != "metrics" for p in service["spec"]["ports"])
    # the ingress controller's peers may reach the HTTP port only
    policy = find(manifests, "NetworkPolicy", "polydub-api")
    np_values = chart.merge_values(DEFAULTS, values)["networkPolicy"]
    controller = np_values["ingressController"]["peers"]
    rules = [r for r in policy["spec"]["ingress"] if r["from"] == controller]
    assert [r["ports"] for r in rules] == [[{"protocol": "TCP", "port": 8000}]]


# ---- item 3: ServiceMonitor --------------------------------------------------------------------


def test_no_service_monitor_unless_enabled() -> None:
    for values in ({}, PRODUCTION):
        assert not [m for m in chart.render(values) if m.kind == "ServiceMonitor"]


def test_service_monitor_scrapes_every_metrics_service_and_validates() -> None:
    values = {
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "labels": {"release": "kube-prometheus-stack"},
                "interval": "15s",
            }
        }
    }
    manifests = chart.check(chart.merge_values(PRODUCTION, values))
    (monitor,) = kinds(manifests, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["polydub"]}
    assert spec["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    # the Grafana dashboard's $release is this pod label, as Prometheus names it
    assert "app.kubernetes.io/instance" in spec["podTargetLabels"]
    selected = [
        s
        for s in kinds(manifests, "Service")
        if all(
            s["metadata"]["labels"].get(k) == v for k, v in spec["selector"]["matchLabels"].items()
        )
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [
        "polydub-api-metrics",
        "polydub-orchestrator-metrics",
        "polydub-triton",
    ]
    for service in selected:
        assert "metrics" in [p["name"] for p in service["spec"]["ports"]]
    # the validator is live for it: a misspelt field fails
    broken = dict(monitor, spec=dict(spec, endpoint=spec["endpoints"]))
    problems = chart.validate([Manifest("servicemonitor.yaml", broken)])
    assert any("'endpoint' was unexpected" in p for p in problems), problems


# ---- item 3: NetworkPolicies -------------------------------------------------------------------


def _policy(manifests: list[Manifest], component: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(manifests, "NetworkPolicy", f"polydub-{component}")["spec"]
    return spec


def test_default_network_policies_assume_no_namespace_name() -> None:
    rendered = chart.render({})
    for policy in kinds(rendered, "NetworkPolicy"):
        assert "kubernetes.io/metadata.name" not in str(policy), policy["metadata"]["name"]
    peers = DEFAULTS["networkPolicy"]["ingressController"]["peers"]
    assert _policy(rendered, "api")["ingress"][0]["from"] == peers


def test_network_policy_peers_and_webhook_egress_come_from_values() -> None:
    edge = [
        {
            "namespaceSelector": {"matchLabels": {"team": "edge"}},
            "podSelector": {"matchLabels": {"app": "traefik"}},
        }
    ]
    prom = [{"namespaceSelector": {"matchLabels": {"observability": "true"}}}]
    scaler = [{"podSelector": {"matchLabels": {"app": "scaler"}}}]
    clients = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    values = {
        "networkPolicy": {
            "ingressController": {"peers": edge},
            "monitoring": {"peers": prom},
            "keda": {"peers": scaler},
            "webhooks": {"to": clients, "ports": [443, 8443]},
        }
    }
    manifests = chart.check(values, kube_versions=("1.37.0",))
    api = _policy(manifests, "api")
    assert [(r["from"], r["ports"]) for r in api["ingress"]] == [
        (edge, [{"protocol": "TCP", "port": 8000}]),
        (prom, [{"protocol": "TCP", "port": 9100}]),
    ]
    webhook = [r for r in api["egress"] if r.get("to") == clients]
    assert webhook == [
        {
            "to": clients,
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}],
        }
    ]
    assert _policy(manifests, "orchestrator")["ingress"][0]["from"] == prom
    assert _policy(manifests, "triton")["ingress"][1]["from"] == prom
    assert _policy(manifests, "nats")["ingress"][2]["from"] == scaler + prom
    # webhooks off: no egress rule to clients
    off = chart.render({"networkPolicy": {"webhooks": {"enabled": False}}})
    assert not any("ipBlock" in str(r) for r in _policy(off, "api")["egress"])


def test_empty_peer_lists_admit_nobody_instead_of_everybody() -> None:
    none: dict[str, Any] = {"peers": []}
    values = {"networkPolicy": {"ingressController": none, "monitoring": none, "keda": none}}
    manifests = chart.check(values, kube_versions=("1.37.0",))
    assert not _policy(manifests, "api").get("ingress")
    assert not _policy(manifests, "orchestrator").get("ingress")
    # a rule without `from` would admit every source: none is rendered
    for policy in kinds(manifests, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress") or []:
            assert rule.get("from"), policy["metadata"]["name"]


def test_the_chart_check_command_validates_an_enabled_service_monitor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m polydub.deploy.chart`` knows the ServiceMonitor schema (polydub.deploy
    .crd_schemas): an enabled monitor is validated like any other object, not reported as an
    unknown kind."""
    values = tmp_path / "monitoring.yaml"
    values.write_text(yaml.safe_dump({"metrics": {"serviceMonitor": {"enabled": True}}}))
    assert chart.main(["-f", str(values), "--kube-version", "1.37.0"]) == 0
    assert "ok  ServiceMonitor/polydub (polydub/templates/servicemonitor.yaml)" in (
        capsys.readouterr().out
    )
    values.write_text(
        yaml.safe_dump({"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}})
    )
    assert chart.main(["-f", str(values), "--kube-version", "1.37.0"]) == 1
    assert "ServiceMonitor/polydub" in capsys.readouterr().err
