"""The chart's side of issue #13's hardening: the worker's operations port is opened to the pod
network explicitly (its default is loopback), and the API gets the key that encrypts webhook
secrets at rest from the release's Secret."""

from __future__ import annotations

from polydub.deploy import chart
from polydub.settings import Settings
from tests.unit.deploy.rendered import container, secret_data


def test_the_worker_binds_loopback_unless_the_chart_opens_it() -> None:
    assert Settings().worker_metrics_host == "127.0.0.1"
    env = {e["name"]: e for e in container(chart.render({}), "polydub-orchestrator")["env"]}
    assert env["POLYDUB_WORKER_METRICS_HOST"]["value"] == "0.0.0.0"


def test_the_api_reads_the_webhook_encryption_key_from_the_secret() -> None:
    manifests = chart.render({"secrets": {"webhookSecretKeys": "k2,k1"}})
    env = {e["name"]: e for e in container(manifests, "polydub-api")["env"]}
    ref = env["POLYDUB_API_WEBHOOK_SECRET_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "polydub", "key": "POLYDUB_API_WEBHOOK_SECRET_KEYS"}
    assert secret_data(manifests, "polydub")["POLYDUB_API_WEBHOOK_SECRET_KEYS"] == "k2,k1"
    worker = container(manifests, "polydub-orchestrator")["env"]
    assert "POLYDUB_API_WEBHOOK_SECRET_KEYS" not in {e["name"] for e in worker}
