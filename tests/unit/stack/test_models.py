"""The stack's app servers: models provisioned before them, settings passed to them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polydub.settings import Settings
from polydub.stack import Stack, StackError
from polydub.stack import models as stack_models
from polydub.stack.models import ModelsError, Provisioned, has_weights, loadable_models, provision
from polydub.stack.servers import FACTORIES, api_url, settings_env

pytestmark = pytest.mark.unit


def _model(repo: Path, name: str, *files: str) -> None:
    (repo / name).mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text("")
    for file in files:
        path = repo / name / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_loadable_models_put_graphs_before_python_models(tmp_path: Path) -> None:
    _model(tmp_path, "nllb", "1/model.py")
    _model(tmp_path, "nllb_encoder", "1/model.onnx")
    _model(tmp_path, "mms_tts_spa", "1/model.onnx")
    _model(tmp_path, "mms_tts_tokenizer", "1/model.py", "1/tokenizers/spa.json")
    _model(tmp_path, "whisper_encoder", "configs/gpu.pbtxt")  # a config, no weights
    (tmp_path / "notes").mkdir()
    assert has_weights(tmp_path)
    assert loadable_models(tmp_path) == (
        ["mms_tts_spa", "nllb_encoder", "mms_tts_tokenizer", "nllb"],
        ["whisper_encoder"],
    )


def test_provision_exports_only_an_empty_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "models"
    settings = Settings(stack_dir=tmp_path / "stack", model_repository=repo)
    calls: list[str] = []

    def fake_export(s: Settings, log: Path, notify: stack_models.Notify) -> str:
        calls.append("export")
        _model(repo, "silero_vad", "1/model.onnx")
        _model(repo, "nllb", "1/model.py")
        return "tiny"

    def fake_load(s: Settings, names: list[str], result: Provisioned) -> None:
        calls.append(f"load {','.join(names)}")
        result.loaded = list(names)

    monkeypatch.setattr(stack_models, "export_models", fake_export)
    monkeypatch.setattr(stack_models, "load_models", fake_load)
    notes: list[str] = []
    first = provision(settings, tmp_path / "run", notes.append)
    assert first.exported == "tiny" and first.loaded == ["silero_vad", "nllb"]
    second = provision(settings, tmp_path / "run", notes.append)
    assert second.exported is None  # weights are there now: never exported twice
    assert calls == ["export", "load silero_vad,nllb", "load silero_vad,nllb"]
    assert notes == ["loaded into Triton: silero_vad, nllb"] * 2


def test_loading_needs_a_running_triton(tmp_path: Path) -> None:
    settings = Settings(stack_dir=tmp_path, triton_http_port=1, model_repository=tmp_path)
    with pytest.raises(ModelsError, match="Triton does not answer"):
        stack_models.load_models(settings, ["silero_vad"], Provisioned())


def test_the_stack_provisions_models_before_the_app_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(stack_dir=tmp_path)
    assert list(FACTORIES) == ["postgres", "nats", "s3", "triton", "api", "worker"]
    stack = Stack(settings)
    assert [s.name for s in stack.servers if s.needs_models] == ["api", "worker"]
    assert not any(s.needs_models for s in Stack(settings, only=["postgres", "triton"]).servers)

    def broken(*_: object) -> Provisioned:
        raise ModelsError("Triton does not answer on http://127.0.0.1:1")

    monkeypatch.setattr("polydub.stack.stack.provision", broken)
    with pytest.raises(StackError, match="models: Triton does not answer"):
        Stack(settings, only=["worker"]).up()  # refused before anything starts
    assert not (tmp_path / "run" / "worker.pid").exists()


def test_settings_env_reproduces_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        stack_dir=Path("rel/stack"),
        api_port=12345,
        api_run_workers=False,
        triton_startup_models=("silero_vad", "nllb"),
        model_repository=tmp_path / "models",
    )
    env = settings_env(settings)
    assert env["POLYDUB_API_PORT"] == "12345" and env["POLYDUB_API_RUN_WORKERS"] == "false"
    assert env["POLYDUB_STACK_DIR"] == str(Path("rel/stack").resolve())
    assert "POLYDUB_API_TMP_DIR" not in env  # None: the child keeps its default
    for name in [k for k in os.environ if k.startswith("POLYDUB_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert (
        child.model_dump()
        == settings.model_copy(update={"stack_dir": Path("rel/stack").resolve()}).model_dump()
    )


def test_api_url_reaches_a_wildcard_bind_through_loopback() -> None:
    assert api_url(Settings(api_host="0.0.0.0", api_port=8080)) == "http://127.0.0.1:8080"
    assert api_url(Settings(api_host="::", api_port=8080)) == "http://[::1]:8080"
    assert api_url(Settings(api_host="10.0.0.5", api_port=81)) == "http://10.0.0.5:81"
