import pytest

from polydub.settings import Settings

pytestmark = pytest.mark.unit


def test_addresses_default_to_the_local_stack_ports() -> None:
    s = Settings(
        postgres_port=1111,
        nats_port=2222,
        s3_port=3333,
        triton_grpc_port=4444,
        triton_http_port=5555,
    )
    assert s.postgres_dsn == "postgresql://polydub@127.0.0.1:1111/polydub"
    assert s.nats_url == "nats://127.0.0.1:2222"
    assert s.s3_endpoint == "127.0.0.1:3333"
    assert s.triton_url == "127.0.0.1:4444"
    assert s.triton_http_url == "http://127.0.0.1:5555"


def test_environment_overrides_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYDUB_NATS_URL", "nats://nats.prod:4222")
    monkeypatch.setenv("POLYDUB_S3_BUCKET", "media")
    monkeypatch.setenv("POLYDUB_TRITON_STARTUP_MODELS", '["whisper", "nllb"]')
    s = Settings()
    assert s.nats_url == "nats://nats.prod:4222"
    assert s.s3_bucket == "media"
    assert s.triton_startup_models == ("whisper", "nllb")


@pytest.mark.parametrize(
    ("target", "http"),
    [
        ("127.0.0.1:4444", "http://127.0.0.1:5555"),
        # the chart's headless Service: every Triton pod, round robin
        (
            "dns:///polydub-triton-headless.ns.svc.cluster.local:8001",
            "http://polydub-triton-headless.ns.svc.cluster.local:5555",
        ),
        ("dns://10.0.0.10/triton:8001", "http://triton:5555"),
        ("ipv4:127.0.0.1:7001,127.0.0.1:7002", "http://127.0.0.1:5555"),
        ("ipv6:[::1]:8001", "http://[::1]:5555"),
    ],
)
def test_triton_http_url_from_any_grpc_target(target: str, http: str) -> None:
    assert Settings(triton_url=target, triton_http_port=5555).triton_http_url == http
