"""The export cache: an entry is found only for the same family, target, checkpoint content and
exporter; a load copies the model folders back and returns the report it stored."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

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
