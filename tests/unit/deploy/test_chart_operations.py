"""What an operator of the chart relies on beyond a valid render (issue #15): credentials that
are stable across renders without `lookup` and leave no hook behind, the model repository in S3
by default, and NOTES.txt lines that name the release's own objects."""

from __future__ import annotations

import re

import pytest

from polydub.deploy import chart
from polydub.deploy.chart import CHART_DIR, ChartError
from tests.unit.deploy.rendered import PRODUCTION, container, find, kinds, notes, secret_data

pytestmark = pytest.mark.unit


# ---- item 6: credentials -----------------------------------------------------------------------


def test_chart_templates_use_neither_lookup_nor_random_values() -> None:
    for path in sorted((CHART_DIR / "templates").iterdir()):
        code = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", path.read_text(), flags=re.S)
        actions = " ".join(re.findall(r"\{\{(.*?)\}\}", code, flags=re.S))
        for function in ("lookup", "randAlphaNum", "randAlpha", "randAscii", "randNumeric"):
            assert not re.search(rf"\b{function}\b", actions), (path.name, function)
        assert not re.search(r"\b(uuidv4|now|genPrivateKey)\b", actions), path.name


def test_derived_credentials_are_the_same_in_every_render() -> None:
    first = chart.render({}, release="dub", namespace="media")
    again = chart.render({}, release="dub", namespace="media")
    upgrade = chart.render({}, release="dub", namespace="media", is_upgrade=True)
    data = secret_data(first, "dub-polydub")
    assert data == secret_data(again, "dub-polydub") == secret_data(upgrade, "dub-polydub")
    assert re.fullmatch(r"[0-9a-f]{32}", data["POSTGRES_PASSWORD"])
    assert re.fullmatch(r"polydub-[0-9a-f]{12}", data["POLYDUB_S3_ACCESS_KEY"])
    assert re.fullmatch(r"[0-9a-f]{40}", data["POLYDUB_S3_SECRET_KEY"])
    assert re.fullmatch(r"[0-9a-f]{64}", data["POLYDUB_API_WEBHOOK_SECRET_KEYS"])
    # the migration hook's copy holds the same DSN
    assert secret_data(first, "dub-polydub-migrate") == {
        "POLYDUB_POSTGRES_DSN": data["POLYDUB_POSTGRES_DSN"]
    }
    # another release, namespace or salt derives other values; a given value wins
    others = [
        secret_data(chart.render({}, release="other", namespace="media"), "other-polydub"),
        secret_data(chart.render({}, release="dub", namespace="prod"), "dub-polydub"),
        secret_data(
            chart.render({"secrets": {"derivationSalt": "s"}}, release="dub", namespace="media"),
            "dub-polydub",
        ),
    ]
    for other in others:
        for key in ("POSTGRES_PASSWORD", "POLYDUB_S3_ACCESS_KEY", "POLYDUB_S3_SECRET_KEY"):
            assert other[key] != data[key], key
    given = chart.render(
        {"secrets": {"s3AccessKey": "ak", "s3SecretKey": "sk", "postgresPassword": "pw"}}
    )
    assert secret_data(given, "polydub")["POLYDUB_S3_ACCESS_KEY"] == "ak"
    assert secret_data(given, "polydub")["POLYDUB_S3_SECRET_KEY"] == "sk"
    assert secret_data(given, "polydub")["POSTGRES_PASSWORD"] == "pw"


def test_secrets_are_release_resources_and_the_hook_copy_is_deleted() -> None:
    for manifests in (
        chart.render({}),
        chart.render(
            {"postgresql": {"bundled": False, "external": {"dsn": "postgresql://u:p@db/x"}}}
        ),
    ):
        for secret in kinds(manifests, "Secret"):
            annotations = secret["metadata"].get("annotations") or {}
            assert "helm.sh/resource-policy" not in annotations
            if secret["metadata"]["name"] == "polydub":
                assert not any(k.startswith("helm.sh/hook") for k in annotations)
            else:
                assert secret["metadata"]["name"] == "polydub-migrate"
                policy = annotations["helm.sh/hook-delete-policy"].split(",")
                assert {"before-hook-creation", "hook-succeeded"} <= set(policy)
                job = find(manifests, "Job", "polydub-migrate")["metadata"]["annotations"]
                assert annotations["helm.sh/hook"] == job["helm.sh/hook"]
    # without the migration Job there is no hook at all
    assert [
        s["metadata"]["name"]
        for s in kinds(chart.render({"migrations": {"enabled": False}}), "Secret")
    ] == ["polydub"]


def test_production_refuses_to_derive_credentials() -> None:
    assert PRODUCTION["secrets"]["allowDerived"] is False
    assert kinds(chart.render(PRODUCTION), "Secret") == []  # the existingSecret is used
    without = chart.merge_values(PRODUCTION, {"secrets": {"existingSecret": ""}})
    # whichever check fails first, each names the production path
    with pytest.raises(ChartError, match=r"secrets\.existingSecret"):
        chart.render(without)
    with pytest.raises(ChartError, match=r"an external S3 needs secrets\.s3AccessKey"):
        chart.render({"s3": {"bundled": False, "external": {"endpoint": "s3.example.com:443"}}})
    bundled = {"secrets": {"allowDerived": False}}
    with pytest.raises(
        ChartError,
        match=r"secrets\.postgresPassword is empty and "
        r"secrets\.allowDerived is false",
    ):
        chart.render(bundled)
    explicit = chart.merge_values(
        bundled,
        {
            "secrets": {
                "postgresPassword": "pw",
                "s3AccessKey": "ak",
                "s3SecretKey": "sk",
                "webhookSecretKeys": "wk",
            }
        },
    )
    assert secret_data(chart.render(explicit), "polydub")["POSTGRES_PASSWORD"] == "pw"
    # and NOTES warns only when something was derived
    assert "DERIVED" in notes({}, "dub", "media")
    assert "DERIVED" not in notes(explicit, "dub", "media")


# ---- item 8: the model repository --------------------------------------------------------------


def test_triton_reads_the_models_from_the_bucket_by_default() -> None:
    manifests = chart.render({}, release="dub", namespace="media")
    triton = container(manifests, "dub-polydub-triton")
    assert "--model-repository=s3://dub-polydub-minio:9000/polydub/models" in triton["args"]
    env = {e["name"]: e for e in triton["env"]}
    refs = {
        n: env[n]["valueFrom"]["secretKeyRef"]
        for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "dub-polydub", "key": "POLYDUB_S3_ACCESS_KEY"},
        "AWS_SECRET_ACCESS_KEY": {"name": "dub-polydub", "key": "POLYDUB_S3_SECRET_KEY"},
    }
    assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    egress = find(manifests, "NetworkPolicy", "dub-polydub-triton")["spec"]["egress"]
    assert any(
        r.get("to", [{}])[0]
        .get("podSelector", {})
        .get("matchLabels", {})
        .get("app.kubernetes.io/component")
        == "minio"
        for r in egress
    )
    # an image with the weights baked in: /models, no credentials, no S3 egress
    baked = chart.render({"triton": {"modelRepository": "/models"}})
    c = container(baked, "polydub-triton")
    assert "--model-repository=/models" in c["args"]
    assert not any(e["name"].startswith("AWS_") for e in c["env"])
    assert len(find(baked, "NetworkPolicy", "polydub-triton")["spec"]["egress"]) == 1  # DNS


# ---- item 2: NOTES.txt -------------------------------------------------------------------------


def test_notes_tell_how_to_reach_the_page_and_create_the_first_key() -> None:
    from typer.testing import CliRunner

    from polydub.cli.keys import app

    values = {"api": {"ingress": {"enabled": False}, "service": {"port": 8081}}}
    text = notes(values, "dub", "media")
    manifests = chart.render(values, release="dub", namespace="media")
    key_line = (
        "kubectl -n media exec deploy/dub-polydub-api -c api -- polydub keys create --name admin"
    )
    assert key_line in text
    api = find(manifests, "Deployment", "dub-polydub-api")
    assert [c["name"] for c in api["spec"]["template"]["spec"]["containers"]] == ["api"]
    # the CLI takes exactly that option (polydub/cli/keys.py)
    help_text = CliRunner().invoke(app, ["create", "--help"]).output
    assert "--name" in help_text
    # the page: a port-forward to the rendered Service and port
    assert "kubectl -n media port-forward svc/dub-polydub-api 8080:8081" in text
    service = find(manifests, "Service", "dub-polydub-api")
    assert service["spec"]["ports"][0]["port"] == 8081
    # the models: uploaded to the bucket Triton reads, through the rendered MinIO Service
    assert "port-forward svc/dub-polydub-minio 9000:9000" in text
    assert "get secret dub-polydub -o jsonpath='{.data.POLYDUB_S3_ACCESS_KEY}'" in text
    assert "s3 sync model_repository/ s3://polydub/models/" in text
    assert "rollout restart deploy/dub-polydub-triton" in text
    find(manifests, "Service", "dub-polydub-minio")
    # with the Ingress: its host
    hosted = notes(
        {
            "api": {
                "ingress": {
                    "host": "dub.example.com",
                    "tls": [{"secretName": "t", "hosts": ["dub.example.com"]}],
                }
            }
        },
        "dub",
        "media",
    )
    assert "https://dub.example.com/" in hosted and "port-forward svc/dub-polydub-api" not in hosted
    # production: the existing Secret, no derived warning, the external S3 upload line
    prod = notes(PRODUCTION, "polydub", "polydub")
    assert "exec deploy/polydub-api -c api -- polydub keys create --name admin" in prod
    assert (
        "--endpoint-url https://s3.example.com:443 s3 sync model_repository/ s3://polydub-prod/models/"
        in prod
    )
    assert "DERIVED" not in prod and "Credentials are in" not in prod
