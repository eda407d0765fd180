"""The export cache: an entry is found only for the same family, target, checkpoint content and
exporter; a load copies the model folders back and returns the report it stored."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from polydub.export import run
from polydub.export.cache import ExportCache
from polydub.export.hub import Inspected
from polydub.export.spec import RANDOM, Checkpoint, Checkpoints, ExportReport, Target

CHECKPOINT = Checkpoint("/weights/whisper-base", "MIT", label="whisper-base (bundled)")
FOUND = {"whisper": Inspected(revision=None, content_sha256="a" * 64, weight_bytes=1)}


def key(
    cache: ExportCache,
    checkpoints: Checkpoints | None = None,
    target: Target = Target.CPU,
    inspected: Mapping[str, Inspected] = FOUND,
) -> str | None:
    return cache.key("whisper", checkpoints or {"whisper": CHECKPOINT}, target, inspected)


def test_the_key_follows_content_target_and_name(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    same = key(cache)
    assert same is not None and same == key(cache)
    other_content = {"whisper": Inspected(None, "b" * 64, 1)}
    assert key(cache, inspected=other_content) != same
    assert key(cache, target=Target.GPU) != same
    renamed = Checkpoint(CHECKPOINT.ref, "MIT", label="another label")
    assert key(cache, checkpoints={"whisper": renamed}) != same


def test_unpinned_or_random_checkpoints_are_never_cached(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    assert key(cache, inspected={}) is None  # not inspected: content unknown
    assert key(cache, inspected={"whisper": Inspected(None, None, 1)}) is None
    random = {"whisper": Checkpoint(RANDOM, "MIT")}
    assert key(cache, checkpoints=random) is None


def test_a_stored_export_loads_into_another_folder(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path / "cache")
    first = tmp_path / "first"
    (first / "whisper" / "1").mkdir(parents=True)
    (first / "whisper" / "1" / "model.onnx").write_bytes(b"graph")
    (first / "other_family").mkdir()  # in the same staging folder, not this family's
    report = ExportReport("whisper", "whisper-base", models=["whisper"], notes=["int8"])
    report.max_abs_diff["whisper_encoder"] = 1e-5
    entry = key(cache)
    assert entry is not None
    assert cache.load(entry, tmp_path / "second") is None

    cache.store(entry, first, report)
    cache.store(entry, first, report)  # again (another process first): no error, one entry
    second = tmp_path / "second"
    loaded = cache.load(entry, second)
    assert loaded == report
    assert (second / "whisper" / "1" / "model.onnx").read_bytes() == b"graph"
    assert not (second / "other_family").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry]


def test_a_damaged_entry_is_exported_again(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path / "cache")
    first = tmp_path / "first"
    (first / "whisper" / "1").mkdir(parents=True)
    (first / "whisper" / "1" / "model.onnx").write_bytes(b"graph")
    entry = key(cache)
    assert entry is not None
    cache.store(entry, first, ExportReport("whisper", "whisper-base", models=["whisper"]))
    shutil.rmtree(tmp_path / "cache" / entry / "whisper")  # the report stays, the files do not
    second = tmp_path / "second"
    assert cache.load(entry, second) is None
    assert not (second / "whisper").exists()
    cache.store(entry, first, ExportReport("whisper", "whisper-base", models=["whisper"]))
    assert cache.load(entry, second) is not None  # stored afresh
    assert (second / "whisper" / "1" / "model.onnx").read_bytes() == b"graph"


def test_a_hub_checkpoint_is_cached_only_when_asked_for_by_commit(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    commit = "0123456789abcdef0123456789abcdef01234567"
    found = {"whisper": Inspected(revision=commit, content_sha256=None, weight_bytes=1)}
    by_branch = {"whisper": Checkpoint("openai/whisper-base", "MIT")}
    main = {"whisper": Checkpoint("openai/whisper-base", "MIT", revision="main")}
    by_commit = {"whisper": Checkpoint("openai/whisper-base", "MIT", revision=commit)}
    assert key(cache, checkpoints=by_branch, inspected=found) is None  # main may move
    assert key(cache, checkpoints=main, inspected=found) is None
    assert key(cache, checkpoints=by_commit, inspected=found) is not None


class CountingFamily:
    name = "whisper"

    def __init__(self) -> None:
        self.exports = 0

    def export(self, checkpoints: Checkpoints, target: Target, repository: Path) -> ExportReport:
        self.exports += 1
        (repository / "whisper" / "1").mkdir(parents=True)
        (repository / "whisper" / "1" / "model.onnx").write_bytes(b"graph")
        return ExportReport("whisper", "whisper-base", models=["whisper"])


def test_export_family_exports_once_then_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = CountingFamily()
    monkeypatch.setattr(run, "get_family", lambda name: family)
    cache = ExportCache(tmp_path / "cache")
    checkpoints = {"whisper": CHECKPOINT}
    for n in range(3):
        out = tmp_path / f"out{n}"
        report = run.export_family("whisper", checkpoints, Target.CPU, out, FOUND, cache)
        assert report.models == ["whisper"]
        assert (out / "whisper" / "1" / "model.onnx").read_bytes() == b"graph"
    assert family.exports == 1
    # without a cache, or with a checkpoint it cannot key, the exporter runs every time
    run.export_family("whisper", checkpoints, Target.CPU, tmp_path / "out3", FOUND, None)
    run.export_family("whisper", checkpoints, Target.CPU, tmp_path / "out4", {}, cache)
    assert family.exports == 3
