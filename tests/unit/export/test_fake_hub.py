"""The fake Hugging Face Hub: repositories in the real file layouts, served over the Hub's file API,
loaded by the unmodified transformers / huggingface_hub code and polydub's own loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub import build, fixtures
from tests.hub.build import EMBEDDING, MMS_PREFIX, NLLB, SEGMENTATION, WHISPER
from tests.hub.fixtures import FakeHub
from tests.hub.server import serve

pytestmark = pytest.mark.unit
fake_hub = fixtures.fake_hub  # pytest finds fixtures by their name in the test module

REPO_ROOT = Path(__file__).resolve().parents[3]
COMMON = {".gitattributes", "README.md"}
LAYOUTS = {
    WHISPER: {
        "added_tokens.json",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "normalizer.json",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    },
    NLLB: {
        "config.json",
        "generation_config.json",
        "pytorch_model.bin",
        "sentencepiece.bpe.model",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    },
    **{
        MMS_PREFIX + lang: {
            "added_tokens.json",  # <unk>, outside the character vocabulary
            "config.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.json",
        }
        for lang in build.MMS_LANGUAGES
    },
    EMBEDDING: {"config.yaml", "pytorch_model.bin"},
    SEGMENTATION: {"config.yaml", "pytorch_model.bin"},
}
# Parameters of the published checkpoints (their model cards / safetensors metadata).
PUBLISHED_PARAMETERS = {
    WHISPER: 72.6e6,
    NLLB: 615e6,
    **{MMS_PREFIX + lang: 36.3e6 for lang in build.MMS_LANGUAGES},
    EMBEDDING: 6.6e6,
    SEGMENTATION: 1.47e6,
}


def test_every_repository_has_its_hub_layout(fake_hub: FakeHub) -> None:
    assert set(fake_hub.server.repos) == set(build.REPOS)
    for repo_id, files in LAYOUTS.items():
        assert set(fake_hub.server.repos[repo_id].files) == files | COMMON, repo_id
    sizes = build.repo_sizes(fake_hub.root)
    assert max(sizes.values()) < 30 * 2**20, sizes  # ci scale: small enough to build per session


def test_builds_are_byte_for_byte_repeatable(fake_hub: FakeHub, tmp_path: Path) -> None:
    for repo_id in (MMS_PREFIX + "eng", SEGMENTATION):
        again = build.build_repo(repo_id, tmp_path / repo_id)
        built = fake_hub.root / repo_id
        for name in LAYOUTS[repo_id] | COMMON:
            assert (again / name).read_bytes() == (built / name).read_bytes(), (repo_id, name)


def test_real_scale_has_the_published_parameter_counts() -> None:
    counts = build.parameter_counts("real")
    for repo_id, published in PUBLISHED_PARAMETERS.items():
        assert abs(counts[repo_id] / published - 1) < 0.01, (repo_id, counts[repo_id])


# ------------------------------------------------------------------------------- the file API


def test_resolve_serves_files_with_the_hubs_headers(fake_hub: FakeHub, tmp_path: Path) -> None:
    path = hf_hub_download(WHISPER, "config.json", endpoint=fake_hub.url, cache_dir=tmp_path)
    built = fake_hub.root / WHISPER / "config.json"
    assert Path(path).read_bytes() == built.read_bytes()
    commit = fake_hub.commit(WHISPER)
    assert f"/snapshots/{commit}/" in path  # huggingface_hub filed it under X-Repo-Commit
    url = f"{fake_hub.url}/{WHISPER}/resolve/main/model.safetensors"
    head = requests.head(url, timeout=10)
    lfs = fake_hub.server.repos[WHISPER].files["model.safetensors"]
    assert head.headers["ETag"] == head.headers["X-Linked-Etag"] == f'"{lfs.sha256}"'
    assert int(head.headers["Content-Length"]) == lfs.size
    ranged = requests.get(url, headers={"Range": "bytes=8-15"}, timeout=10)
    assert ranged.status_code == 206
    assert ranged.content == (fake_hub.root / WHISPER / "model.safetensors").read_bytes()[8:16]


def test_model_info_lists_the_commit_and_siblings(fake_hub: FakeHub) -> None:
    api = HfApi(endpoint=fake_hub.url)
    info = api.model_info(NLLB, files_metadata=True)
    assert info.sha == fake_hub.commit(NLLB)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == LAYOUTS[NLLB] | COMMON
    weights = siblings["pytorch_model.bin"]
    assert weights.lfs is not None and weights.size == weights.lfs.size > 0
    assert "license:cc-by-nc-4.0" in (info.tags or [])
    assert api.model_info(NLLB, revision=info.sha).sha == info.sha
    assert set(api.list_repo_files(NLLB)) == set(siblings)
    gated = api.model_info(SEGMENTATION, token=False)  # metadata is public, files are not
    assert gated.gated == "auto"


def test_revisions_main_and_the_commit_sha(fake_hub: FakeHub, tmp_path: Path) -> None:
    commit = fake_hub.commit(EMBEDDING)
    path = hf_hub_download(
        EMBEDDING, "config.yaml", revision=commit, endpoint=fake_hub.url, cache_dir=tmp_path
    )
    assert "WeSpeakerResNet34" in Path(path).read_text()
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            EMBEDDING, "config.yaml", revision="v9.9", endpoint=fake_hub.url, cache_dir=tmp_path
        )
    with pytest.raises(RevisionNotFoundError):  # quoted in the URL as refs%2Fpr%2F1
        hf_hub_download(
            EMBEDDING,
            "config.yaml",
            revision="refs/pr/1",
            endpoint=fake_hub.url,
            cache_dir=tmp_path,
        )
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=fake_hub.url).model_info(EMBEDDING, revision="0" * 40)


def test_missing_repositories_and_files(fake_hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "openai/whisper-nope", "config.json", endpoint=fake_hub.url, cache_dir=tmp_path
        )
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=fake_hub.url).model_info("openai/whisper-nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(WHISPER, "flax_model.msgpack", endpoint=fake_hub.url, cache_dir=tmp_path)


def test_gated_repository_needs_an_accepted_token(fake_hub: FakeHub, tmp_path: Path) -> None:
    def download(token: str | bool) -> str:
        return hf_hub_download(
            SEGMENTATION,
            "pytorch_model.bin",
            token=token,
            endpoint=fake_hub.url,
            cache_dir=tmp_path,
        )

    with pytest.raises(GatedRepoError) as no_token:
        download(False)
    assert no_token.value.response is not None and no_token.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as refused:
        download("hf_not_on_the_list")
    assert refused.value.response is not None and refused.value.response.status_code == 403
    path = download(fake_hub.token)
    assert (
        Path(path).stat().st_size
        == fake_hub.server.repos[SEGMENTATION].files["pytorch_model.bin"].size
    )


def test_serve_yields_the_endpoint_polydub_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polydub.export.hub import hub_reachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with serve(tmp_path) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        assert hub_reachable()
    assert not hub_reachable(timeout=1.0)  # the server is gone


# ---------------------------------------------------------- loading, as a user's process does


@pytest.fixture(scope="module")
def loaded(fake_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``tests.hub.load_check`` in a fresh interpreter pointed at the fake Hub by HF_ENDPOINT."""
    home = tmp_path_factory.mktemp("hf-user")
    done = subprocess.run(
        [sys.executable, "-m", "tests.hub.load_check"],
        cwd=REPO_ROOT,
        env=fake_hub.env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {name: facts["error"] for name, facts in results.items() if "error" in facts}
    assert not failed, f"{failed}\n{done.stderr[-4000:]}"
    assert results["endpoint"]["HF_ENDPOINT"] == fake_hub.url
    return results


def test_whisper_loads_with_its_real_vocabulary(loaded: dict[str, Any]) -> None:
    whisper = loaded["whisper"]
    assert whisper["class"] == "WhisperForConditionalGeneration"
    assert whisper["vocab_size"] == whisper["tokenizer_len"] == 51865
    assert whisper["ids"] == {
        "<|endoftext|>": 50257,
        "<|startoftranscript|>": 50258,
        "<|en|>": 50259,
        "<|es|>": 50262,
        "<|transcribe|>": 50359,
        "<|notimestamps|>": 50363,
        "<|0.00|>": 50364,
        "<|30.00|>": 51864,
    }
    assert whisper["roundtrip"] == " hola mundo"
    assert whisper["languages"] == 99 and whisper["lang_es"] == 50262
    assert whisper["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert whisper["no_timestamps"] == 50363 and whisper["suppress_tokens"] == 88
    assert whisper["mel_bins"] == 80
    assert len(whisper["generated"]) == 3 and max(whisper["generated"]) < 51865


def test_nllb_loads_through_auto_tokenizer(loaded: dict[str, Any]) -> None:
    nllb = loaded["nllb"]
    assert nllb["tokenizer_class"] == "NllbTokenizerFast"
    assert nllb["model_class"] == "M2M100ForConditionalGeneration"
    assert nllb["vocab_size"] == nllb["tokenizer_len"]  # ci: config and tokenizer shrink together
    assert (nllb["source_first"], nllb["source_last"]) == ("spa_Latn", "</s>")
    assert nllb["generated_prefix"] == ["</s>", "fra_Latn"]  # decoder start, forced target
    assert nllb["special_ids"] == [0, 1, 2]


@pytest.mark.parametrize("language", build.MMS_LANGUAGES)
def test_mms_tts_loads_and_tokenises_as_polydub(loaded: dict[str, Any], language: str) -> None:
    tts = loaded[f"mms_tts_{language}"]
    assert tts["class"] == "VitsModel" and tts["sampling_rate"] == 16000
    assert tts["pad_id"] == 0  # the pad token is the vocabulary's id-0 letter, as on the Hub
    assert tts["same_ids_as_polydub"]
    assert tts["samples"] > 0


def test_pyannote_checkpoints_load_into_polydubs_modules(loaded: dict[str, Any]) -> None:
    assert loaded["segmentation"]["output"] == [1, 589, 7]
    assert loaded["segmentation"]["target"] == "pyannote.audio.models.segmentation.PyanNet"
    assert loaded["embedding"]["output"] == [1, 256]
    refused = loaded["gated_refused"]
    assert (refused["no_token"], refused["wrong_token"]) == ("GatedRepoError", "GatedRepoError")


def test_polydub_hub_helpers_follow_hf_endpoint(loaded: dict[str, Any], fake_hub: FakeHub) -> None:
    polydub = loaded["polydub_hub"]
    assert polydub["reachable"]
    assert polydub["revision"] == fake_hub.commit(WHISPER)
    assert polydub["weight_bytes"] == (fake_hub.root / WHISPER / "model.safetensors").stat().st_size
    assert polydub["gated_file"] == "config.yaml"  # HF_TOKEN is the accepted token


def test_loading_made_no_request_the_server_could_not_answer(
    loaded: dict[str, Any], fake_hub: FakeHub
) -> None:
    statuses = {status for _, _, status in fake_hub.server.requests}
    assert statuses <= {200, 206, 401, 403, 404}, fake_hub.server.requests
