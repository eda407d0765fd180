"""Issue #15 on rendered output: downloads that work from outside the cluster (item 1), Triton
scale-out that receives traffic (item 4), worker health that means something (item 5)."""

from __future__ import annotations

from typing import Any

import pytest

from polydub.deploy import chart
from tests.unit.deploy.rendered import PRODUCTION, container, find

pytestmark = pytest.mark.unit


def _env(manifests: list[chart.Manifest], deployment: str) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(manifests, deployment)["env"]}


# ---- item 1: downloads ----------------------------------------------------------------------


def test_by_default_downloads_go_through_the_api() -> None:
    manifests = chart.render({})
    for deployment in ("polydub-api", "polydub-orchestrator"):
        # no public endpoint: the API streams the files behind its own signed links
        assert "POLYDUB_S3_PUBLIC_ENDPOINT" not in _env(manifests, deployment)
    # S3 stays internal: nothing outside polydub's pods may reach the bundled MinIO
    minio = find(manifests, "NetworkPolicy", "polydub-minio")["spec"]
    for rule in minio["ingress"]:
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, peer
    # the Ingress streams the download instead of buffering it (a dubbed video is large)
    ingress = find(manifests, "Ingress", "polydub-api")["metadata"]["annotations"]
    assert ingress["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


@pytest.mark.parametrize("values", [{"s3": {"publicEndpoint": "media.example.com"}}, PRODUCTION])
def test_a_public_endpoint_makes_presigned_links(values: dict[str, Any]) -> None:
    env = _env(chart.render(values), "polydub-api")
    assert env["POLYDUB_S3_PUBLIC_ENDPOINT"] == "media.example.com"


# ---- item 4: Triton behind a headless Service, balanced by the clients ----------------------


@pytest.mark.parametrize("values", [{}, PRODUCTION])
def test_clients_resolve_every_triton_pod(values: dict[str, Any]) -> None:
    manifests = chart.render(values, release="dub", namespace="media")
    headless = find(manifests, "Service", "dub-polydub-triton-headless")["spec"]
    pods = find(manifests, "Deployment", "dub-polydub-triton")["spec"]["selector"]["matchLabels"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is False
    assert headless["selector"] == pods
    grpc = next(p for p in headless["ports"] if p["name"] == "grpc")
    assert grpc["targetPort"] == "grpc"
    target = f"dns:///dub-polydub-triton-headless.media.svc.cluster.local:{grpc['port']}"
    for deployment in ("dub-polydub-api", "dub-polydub-orchestrator"):
        assert _env(manifests, deployment)["POLYDUB_TRITON_URL"] == target
    # not scraped twice: the ServiceMonitor selects the ClusterIP Service's metrics port only
    labels = find(manifests, "Service", "dub-polydub-triton-headless")["metadata"]["labels"]
    assert "polydub/metrics" not in labels


def test_triton_ages_out_connections_so_new_pods_are_found() -> None:
    values = {"triton": {"grpcConnections": {"maxAgeSeconds": 120, "maxAgeGraceSeconds": 900}}}
    args = container(chart.render(values), "polydub-triton")["args"]
    assert "--grpc-max-connection-age=120000" in args  # milliseconds
    assert "--grpc-max-connection-age-grace=900000" in args
    defaults = container(chart.render({}), "polydub-triton")["args"]
    assert "--grpc-max-connection-age=300000" in defaults
    with pytest.raises(chart.ChartError):
        chart.render({"triton": {"grpcConnections": {"maxAgeSeconds": 0}}})


def test_the_headless_service_validates() -> None:
    manifests = chart.check({"triton": {"replicas": 3}}, kube_versions=("1.29.0",))
    assert find(manifests, "Service", "polydub-triton-headless")


# ---- item 5: worker probes ------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, PRODUCTION])
def test_worker_readiness_reads_its_health_checks(values: dict[str, Any]) -> None:
    manifests = chart.render(values)
    worker = container(manifests, "polydub-orchestrator")
    assert worker["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "metrics"}
    # the checks (2 s each, in parallel) finish inside the probe's timeout
    assert worker["readinessProbe"]["timeoutSeconds"] >= 3
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/health/live", "port": "metrics"}
    env = _env(manifests, "polydub-orchestrator")
    # reachable by the kubelet (the worker binds loopback unless told)
    assert env["POLYDUB_WORKER_METRICS_HOST"] == "0.0.0.0"
    port = next(p for p in worker["ports"] if p["name"] == "metrics")["containerPort"]
    assert env["POLYDUB_WORKER_METRICS_PORT"] == str(port)
