"""The Helm chart, linted and rendered by Helm's own library and validated against the Kubernetes
schemas (kubernetes-validate) and the KEDA ScaledObject schema, for the default values, the
production values and a few variants; then the invariants the deployment relies on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polydub.deploy import chart
from polydub.deploy.chart import CHART_DIR, ChartError, Manifest
from polydub.settings import Settings

pytestmark = pytest.mark.unit

PRODUCTION = CHART_DIR / "values-production.yaml"
WORKLOADS = ("Deployment", "StatefulSet", "Job")

# Variants beyond the two values files: KEDA on a bundled 3-node NATS, and everything external
# (with KEDA reading an external NATS) and no NetworkPolicies.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": chart.load_values(PRODUCTION),
    "bundled-ha": {"nats": {"replicas": 3}, "orchestrator": {"keda": {"enabled": True}}},
    "all-external": {
        "postgresql": {"bundled": False, "external": {"dsn": "postgresql://u:p@db:5432/polydub"}},
        "nats": {
            "bundled": False,
            "external": {
                "url": "nats://nats.nats:4222",
                "monitoringEndpoint": "nats-headless.nats.svc.cluster.local:8222",
            },
        },
        "s3": {"bundled": False, "external": {"endpoint": "minio.storage:9000", "secure": False}},
        "secrets": {"s3AccessKey": "polydub", "s3SecretKey": "s3-secret"},
        "orchestrator": {"keda": {"enabled": True}},
        "networkPolicy": {"enabled": False},
        "migrations": {"enabled": False},
        "image": {"digest": "sha256:" + "a" * 64},
    },
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checked(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    """Lint + install and upgrade renders + schema validation (Kubernetes 1.29 and 1.37)."""
    name: str = request.param
    return name, chart.check(VARIANTS[name])


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return chart.render({})


@pytest.fixture(scope="module")
def production() -> list[Manifest]:
    return chart.render(VARIANTS["production"])


def find(manifests: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    matches = [m.body for m in manifests if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def kinds(manifests: list[Manifest], kind: str) -> list[dict[str, Any]]:
    return [m.body for m in manifests if m.kind == kind]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- validity -------------------------------------------------------------------------------


def test_chart_lints_renders_and_validates_against_the_kubernetes_schemas(
    checked: tuple[str, list[Manifest]],
) -> None:
    name, manifests = checked
    assert manifests, name
    counted = {m.kind for m in manifests}
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= counted
    if name in ("production", "bundled-ha", "all-external"):
        assert "ScaledObject" in counted  # validated by the chart's own CRD schema


def test_schema_validation_reports_invalid_objects(production: list[Manifest]) -> None:
    # The validators are live: a misspelt field, a wrong type and an unquoted KEDA value fail.
    broken = [Manifest(m.template, _deepcopy(m.body)) for m in production]
    api = next(m.body for m in broken if m.kind == "Deployment" and m.name == "polydub-api")
    pod_spec(api)["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health/ready"}}
    pod_spec(api)["containers"][0]["imagePullPolicy"] = 3
    scaled = next(m.body for m in broken if m.kind == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 4
    del scaled["spec"]["triggers"][0]["metadata"]["consumer"]
    scaled["spec"]["minReplicas"] = 1  # the field is minReplicaCount
    problems = chart.validate(broken, "1.37.0")
    assert len(problems) == 5, problems  # every problem of every object
    assert any("readinesProbe" in p and "unexpected" in p for p in problems)
    assert any("imagePullPolicy: 3 is not of type 'string'" in p for p in problems)
    assert any("lagThreshold: 4 is not of type 'string'" in p for p in problems)
    assert any("'consumer' is a required property" in p for p in problems)
    assert any("'minReplicas' was unexpected" in p for p in problems)
    # a kind with no schema is a problem, not a silent pass
    unknown = Manifest(
        "x.yaml", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    )
    assert chart.validate([unknown]) == [
        "Widget/w (x.yaml): no schema for example.com/v1 Widget (Kubernetes 1.37.0)"
    ]


def test_unsafe_value_combinations_fail_to_render() -> None:
    with pytest.raises(ChartError, match=r"nats\.replicas must be 1 or an odd number"):
        chart.render({"nats": {"replicas": 2}})
    with pytest.raises(ChartError, match="syncInterval: always"):
        chart.render({"nats": {"replicas": 3, "jetstream": {"syncInterval": "2m"}}})
    with pytest.raises(ChartError, match="external PostgreSQL needs"):
        chart.render({"postgresql": {"bundled": False}})
    with pytest.raises(ChartError, match=r"nats\.external\.url is required"):
        chart.render({"nats": {"bundled": False}})
    with pytest.raises(ChartError, match="modelConfigName: gpu"):
        chart.render({"triton": {"gpu": {"enabled": True}}})


def test_values_schema_refuses_misspelt_or_invalid_settings() -> None:
    # values.schema.json: a typo would otherwise be ignored silently (here: KEDA left off)
    with pytest.raises(ChartError, match="additional properties 'enable' not allowed"):
        chart.render({"orchestrator": {"keda": {"enable": True}}})
    with pytest.raises(ChartError, match="value must be one of '', 'gpu'"):
        chart.render({"triton": {"modelConfigName": "GPU"}})
    with pytest.raises(ChartError, match=r"'LOG_LEVEL' does not match pattern '\^POLYDUB_"):
        chart.render({"config": {"extraEnv": {"LOG_LEVEL": "DEBUG"}}})  # not a POLYDUB_* name
    # and helm lint reports it as a problem
    assert any("'enable' not allowed" in p for p in chart.lint({"api": {"enable": True}}))


def test_check_raises_with_every_problem(tmp_path: Any) -> None:
    bad = tmp_path / "polydub"
    _copy_chart(bad)
    (bad / "templates" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: http}]}\n"
    )
    with pytest.raises(ChartError) as raised:
        chart.check({}, chart_dir=bad, kube_versions=("1.37.0",))
    # install and upgrade renders both report it
    assert str(raised.value).count("Service/x (polydub/templates/broken.yaml)") == 2


# ---- pods -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "production"])
def test_every_pod_runs_non_root_with_a_read_only_root_and_a_tmp_emptydir(
    values: str, default: list[Manifest], production: list[Manifest]
) -> None:
    manifests = default if values == "default" else production
    workloads = [m.body for m in manifests if m.kind in WORKLOADS]
    assert len(workloads) >= 4
    for w in workloads:
        spec = pod_spec(w)
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0, w["metadata"]["name"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], c["name"]


@pytest.mark.parametrize("values", ["default", "production"])
def test_every_container_has_resources_and_every_server_has_probes(
    values: str, default: list[Manifest], production: list[Manifest]
) -> None:
    manifests = default if values == "default" else production
    for w in (m.body for m in manifests if m.kind in WORKLOADS):
        for c in containers(w):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (c["name"], bound)
            if w["kind"] != "Job":
                assert "livenessProbe" in c and "readinessProbe" in c, c["name"]


def test_services_select_their_pods_and_name_container_ports(production: list[Manifest]) -> None:
    pods = [
        (pod_spec(m.body), m.body["spec"]["template"]["metadata"]["labels"])
        for m in production
        if m.kind in ("Deployment", "StatefulSet")
    ]
    for svc in kinds(production, "Service"):
        matched = [spec for spec, labels in pods if selects(svc["spec"]["selector"], labels)]
        assert len(matched) == 1, svc["metadata"]["name"]
        port_names = {p["name"] for c in matched[0]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (svc["metadata"]["name"], port)


def test_pdbs_and_autoscalers_target_existing_workloads(production: list[Manifest]) -> None:
    labels = {
        m.name: m.body["spec"]["template"]["metadata"]["labels"]
        for m in production
        if m.kind in ("Deployment", "StatefulSet")
    }
    pdbs = kinds(production, "PodDisruptionBudget")
    covered = {
        n
        for n, lab in labels.items()
        for p in pdbs
        if selects(p["spec"]["selector"]["matchLabels"], lab)
    }
    assert covered == {"polydub-api", "polydub-orchestrator", "polydub-triton", "polydub-nats"}
    for scaler in kinds(production, "HorizontalPodAutoscaler") + kinds(production, "ScaledObject"):
        target = scaler["spec"]["scaleTargetRef"]
        assert target["name"] in labels and target.get("kind", "Deployment") == "Deployment"
        # a scaled Deployment leaves its replica count to the autoscaler
        deployment = find(production, "Deployment", target["name"])
        assert "replicas" not in deployment["spec"]


def test_settings_env_matches_polydub_settings(production: list[Manifest]) -> None:
    fields = set(Settings.model_fields)
    api = find(production, "Deployment", "polydub-api")
    env = env_of(pod_spec(api)["containers"][0])
    names = {n for n in env if n.startswith("POLYDUB_")}
    unknown = {n for n in names if n.removeprefix("POLYDUB_").lower() not in fields}
    assert unknown == set()
    assert {
        "POLYDUB_POSTGRES_DSN",
        "POLYDUB_NATS_URL",
        "POLYDUB_S3_ENDPOINT",
        "POLYDUB_S3_ACCESS_KEY",
        "POLYDUB_S3_SECRET_KEY",
        "POLYDUB_S3_BUCKET",
        "POLYDUB_S3_SECURE",
        "POLYDUB_S3_PUBLIC_ENDPOINT",
        "POLYDUB_TRITON_URL",
        "POLYDUB_TRITON_HTTP_PORT",
        "POLYDUB_LOG_LEVEL",
        "POLYDUB_LOG_JSON",
    } <= names
    # the headless Service: every Triton pod's address, balanced round robin by the clients
    assert env["POLYDUB_TRITON_URL"]["value"] == (
        "dns:///polydub-triton-headless.polydub.svc.cluster.local:8001"
    )
    assert env["POLYDUB_S3_ENDPOINT"]["value"] == "s3.example.com:443"
    assert env["POLYDUB_S3_SECURE"]["value"] == "true"
    assert env["POLYDUB_NATS_URL"]["value"] == "nats://polydub-nats:4222"
    # the values the API binds to, parsed by Settings itself
    parsed = Settings(
        api_host=env["POLYDUB_API_HOST"]["value"], api_port=env["POLYDUB_API_PORT"]["value"]
    )
    assert (parsed.api_host, parsed.api_port) == ("0.0.0.0", 8000)


# ---- components -----------------------------------------------------------------------------


def test_api_probes_service_ingress_and_cpu_hpa(production: list[Manifest]) -> None:
    api = find(production, "Deployment", "polydub-api")
    c = pod_spec(api)["containers"][0]
    assert c["args"] == ["api", "serve"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    # readiness details are served on the metrics port, which no Ingress reaches
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "metrics"}
    assert c["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
    ]
    hpa = find(production, "HorizontalPodAutoscaler", "polydub-api")
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 65},
    }
    ingress = find(production, "Ingress", "polydub-api")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "dub.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": "polydub-api",
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"] == [{"secretName": "polydub-tls", "hosts": ["dub.example.com"]}]


def test_keda_scales_workers_on_the_jobs_consumer(production: list[Manifest]) -> None:
    scaled = find(production, "ScaledObject", "polydub-orchestrator")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert (meta["stream"], meta["consumer"], meta["account"]) == ("JOBS", "workers", "$G")
    assert (meta["lagThreshold"], meta["activationLagThreshold"]) == ("4", "0")
    # the stream and consumer the application creates (polydub/infra/queue.py)
    from polydub.infra.queue import WORKER_CONSUMER

    assert meta["consumer"] == WORKER_CONSUMER and meta["stream"] == Settings().jobs_stream
    # KEDA reaches the leader as <server_name>.<endpoint>: the headless service with port 8222
    host, port = meta["natsServerMonitoringEndpoint"].split(":")
    assert (host, port) == ("polydub-nats-headless.polydub.svc.cluster.local", "8222")
    headless = find(production, "Service", "polydub-nats-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert 8222 in [p["port"] for p in headless["spec"]["ports"]]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 40)
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 4}
    # KEDA owns the HPA: the chart renders none for the workers
    assert [h["metadata"]["name"] for h in kinds(production, "HorizontalPodAutoscaler")] == [
        "polydub-api",
        "polydub-triton",
    ]


def test_without_keda_an_hpa_scales_the_workers(default: list[Manifest]) -> None:
    assert kinds(default, "ScaledObject") == []
    hpa = find(default, "HorizontalPodAutoscaler", "polydub-orchestrator")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "polydub-orchestrator"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    worker = find(default, "Deployment", "polydub-orchestrator")
    c = pod_spec(worker)["containers"][0]
    assert c["args"] == ["worker", "run"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert pod_spec(worker)["terminationGracePeriodSeconds"] == 300


def test_nats_is_a_three_node_jetstream_cluster_with_sync_always(
    production: list[Manifest], default: list[Manifest]
) -> None:
    conf = find(production, "ConfigMap", "polydub-nats-config")["data"]["nats.conf"]
    assert re.search(r"^\s*sync_interval: always$", conf, re.M)
    routes = re.findall(r"nats://(polydub-nats-\d)\.polydub-nats-headless\.polydub\.svc", conf)
    assert routes == ["polydub-nats-0", "polydub-nats-1", "polydub-nats-2"]
    sts = find(production, "StatefulSet", "polydub-nats")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    anti = pod_spec(sts)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert find(production, "PodDisruptionBudget", "polydub-nats")["spec"]["maxUnavailable"] == 1
    # a single server still fsyncs every write, and has no cluster block
    single = find(default, "ConfigMap", "polydub-nats-config")["data"]["nats.conf"]
    assert "sync_interval: always" in single and "cluster {" not in single
    assert find(default, "StatefulSet", "polydub-nats")["spec"]["replicas"] == 1


def test_triton_on_gpus_with_tensorrt_profile_health_probes_and_queue_time_hpa(
    production: list[Manifest],
) -> None:
    triton = find(production, "Deployment", "polydub-triton")
    c = pod_spec(triton)["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["cpu"] == "4"  # requests kept, not replaced by limits
    assert c["command"] == ["tritonserver"]
    assert {
        # the polydub bucket (s3.bucket) on the external S3, over TLS: no weights in the image
        "--model-repository=s3://https://s3.example.com:443/polydub-prod/models",
        "--model-control-mode=explicit",
        "--load-model=*",
        "--model-config-name=gpu",
        "--strict-readiness=false",  # on-demand TTS unloads must not make the pod unready
    } <= set(c["args"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    volumes = {v["name"]: v for v in pod_spec(triton)["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert pod_spec(triton)["tolerations"][0]["key"] == "nvidia.com/gpu"
    hpa = find(production, "HorizontalPodAutoscaler", "polydub-triton")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "triton_queue_duration_us_per_request"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}


def test_triton_on_cpu_by_default_loads_the_named_models(default: list[Manifest]) -> None:
    c = pod_spec(find(default, "Deployment", "polydub-triton"))["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert not any(a.startswith("--model-config-name") for a in c["args"])
    named = chart.render({"triton": {"loadModels": ["silero_vad", "nllb"]}})
    args = pod_spec(find(named, "Deployment", "polydub-triton"))["containers"][0]["args"]
    assert [a for a in args if a.startswith("--load-model")] == [
        "--load-model=silero_vad",
        "--load-model=nllb",
    ]


# ---- secrets and the migration hook ------------------------------------------------------------


def test_chart_secret_holds_the_credentials_and_a_hook_copy_feeds_the_migration(
    default: list[Manifest],
) -> None:
    import base64

    secret = find(default, "Secret", "polydub")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    # each API key has its own signing secret; the Secret holds the key that encrypts them
    assert set(data) == {
        "POLYDUB_POSTGRES_DSN",
        "POLYDUB_S3_ACCESS_KEY",
        "POLYDUB_S3_SECRET_KEY",
        "POLYDUB_API_WEBHOOK_SECRET_KEYS",
        "POSTGRES_PASSWORD",
    }
    assert data["POLYDUB_POSTGRES_DSN"] == (
        f"postgresql://polydub:{data['POSTGRES_PASSWORD']}@polydub-postgresql:5432/polydub"
    )
    assert len(data["POSTGRES_PASSWORD"]) == 32 and len(data["POLYDUB_S3_SECRET_KEY"]) == 40
    # the release's Secret is no hook: helm uninstall removes it with the release
    assert "annotations" not in secret["metadata"]
    job = find(default, "Job", "polydub-migrate")
    copy = find(default, "Secret", "polydub-migrate")
    copy_hook = copy["metadata"]["annotations"]
    job_hook = job["metadata"]["annotations"]
    assert job_hook["helm.sh/hook"] == "post-install,pre-upgrade"  # bundled PostgreSQL
    assert copy_hook["helm.sh/hook"] == job_hook["helm.sh/hook"]
    assert int(copy_hook["helm.sh/hook-weight"]) < int(job_hook["helm.sh/hook-weight"])
    assert "hook-succeeded" in copy_hook["helm.sh/hook-delete-policy"]
    assert copy["data"] == {"POLYDUB_POSTGRES_DSN": secret["data"]["POLYDUB_POSTGRES_DSN"]}
    (migrate,) = pod_spec(job)["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in migrate["env"] if "valueFrom" in e}
    assert refs == {
        "POLYDUB_POSTGRES_DSN": {"name": "polydub-migrate", "key": "POLYDUB_POSTGRES_DSN"}
    }
    assert migrate["args"] == ["db", "migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_production_reads_an_existing_secret_and_migrates_before_install(
    production: list[Manifest],
) -> None:
    assert kinds(production, "Secret") == []
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for m in production
        if m.kind in WORKLOADS
        for c in containers(m.body)
        for e in c.get("env", [])
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    ]
    assert refs and set(refs) == {"polydub-credentials"}
    job = find(production, "Job", "polydub-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    # no bundled PostgreSQL or MinIO in production
    assert {m.name for m in production if m.kind == "StatefulSet"} == {"polydub-nats"}


def test_given_credentials_and_image_digest_are_used() -> None:
    rendered = chart.render(
        {"secrets": {"postgresPassword": "p@ss word"}, "image": {"digest": "sha256:" + "b" * 64}}
    )
    import base64

    dsn = base64.b64decode(find(rendered, "Secret", "polydub")["data"]["POLYDUB_POSTGRES_DSN"])
    assert dsn.decode() == "postgresql://polydub:p%40ss+word@polydub-postgresql:5432/polydub"
    images = {
        c["image"]
        for m in rendered
        if m.kind in ("Deployment", "Job") and m.name != "polydub-triton"
        for c in containers(m.body)
    }
    assert images == {"polydub@sha256:" + "b" * 64}


# ---- network policies -------------------------------------------------------------------------


def _policies_for(manifests: list[Manifest], component: str) -> list[dict[str, Any]]:
    labels = {
        "app.kubernetes.io/name": "polydub",
        "app.kubernetes.io/instance": "polydub",
        "app.kubernetes.io/component": component,
    }
    return [
        p
        for p in kinds(manifests, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], labels)
    ]


def _component(peer: dict[str, Any]) -> str | None:
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    value = labels.get("app.kubernetes.io/component")
    return None if value is None else str(value)


@pytest.mark.parametrize("values", ["default", "production"])
def test_every_component_is_isolated_in_both_directions(
    values: str, default: list[Manifest], production: list[Manifest]
) -> None:
    manifests = default if values == "default" else production
    for w in (m for m in manifests if m.kind in WORKLOADS):
        component = w.body["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        (policy,) = _policies_for(manifests, component)
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], component


def test_network_policies_allow_only_the_intended_traffic(production: list[Manifest]) -> None:
    (api,) = _policies_for(production, "api")
    http_in, metrics_in = api["spec"]["ingress"]
    assert http_in["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert metrics_in["ports"] == [{"protocol": "TCP", "port": 9100}]
    namespaces = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in (http_in, metrics_in)
        for p in rule["from"]
    ]
    assert namespaces == ["ingress-nginx", "monitoring"]  # values-production.yaml's peers
    # the API sends the client webhooks: public addresses on 443 only
    webhooks = next(
        r
        for r in api["spec"]["egress"]
        if r.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    )
    assert "10.0.0.0/8" in webhooks["to"][0]["ipBlock"]["except"]
    assert webhooks["ports"] == [{"protocol": "TCP", "port": 443}]

    (worker,) = _policies_for(production, "orchestrator")
    (worker_in,) = worker["spec"]["ingress"]
    assert worker_in["ports"] == [{"protocol": "TCP", "port": 9100}]
    assert [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in worker_in["from"]
    ] == ["monitoring"]
    egress_ports = {p["port"] for rule in worker["spec"]["egress"] for p in rule["ports"]}
    assert {53, 5432, 4222, 443, 8001} <= egress_ports
    postgres_rule = next(
        r for r in worker["spec"]["egress"] if {"protocol": "TCP", "port": 5432} in r["ports"]
    )
    assert postgres_rule["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    # workers send no webhooks: no rule reaches arbitrary addresses
    assert not any(
        peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
        for r in worker["spec"]["egress"]
        for peer in r.get("to", [])
    )

    (triton,) = _policies_for(production, "triton")
    inference, metrics = triton["spec"]["ingress"]
    assert sorted(_component(p) or "" for p in inference["from"]) == ["api", "orchestrator"]
    assert {p["port"] for p in inference["ports"]} == {8000, 8001}
    assert metrics["ports"] == [{"protocol": "TCP", "port": 8002}]
    # DNS, and the external S3 the model repository is read from (s3.external.port)
    assert triton["spec"]["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"ports": [{"protocol": "TCP", "port": 443}]},
    ]

    (nats,) = _policies_for(production, "nats")
    client, cluster, monitor = nats["spec"]["ingress"]
    assert sorted(_component(p) or "" for p in client["from"]) == ["api", "nats", "orchestrator"]
    assert [_component(p) for p in cluster["from"]] == ["nats"]
    assert monitor["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "keda"
    }


def test_bundled_services_accept_only_polydub_clients(default: list[Manifest]) -> None:
    for component, port, clients in (
        ("postgresql", 5432, ["api", "migrate", "orchestrator"]),
        ("minio", 9000, ["api", "orchestrator", "triton"]),
    ):
        (policy,) = _policies_for(default, component)
        (rule,) = policy["spec"]["ingress"]
        assert sorted(_component(p) or "" for p in rule["from"]) == clients
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        assert policy["spec"]["egress"] == []


# ---- helpers -----------------------------------------------------------------------------------


def _deepcopy(body: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(body)


def _copy_chart(dest: Any, ignore: Callable[..., Any] | None = None) -> None:
    import shutil

    shutil.copytree(CHART_DIR, dest, ignore=ignore)
