"""Real size, measured: the ``small`` preset's checkpoints at their published dimensions (random
weights, real file layouts from ``tests.hub.build``), exported by polydub's own export code and
served by a real Triton, one family and one model at a time.

Per family: build (a child process), export (another child process: its peak RSS is that
family's export alone, from ``wait4``), disk of each exported model folder. Then one Triton: each
model loaded alone (load time, memory of the tritonserver process tree before and after: its
python-backend stubs are children of it), one inference per family, memory again. Not a test
and not run in CI: NLLB-200-distilled-600M alone takes minutes and ~11 GB to export.

    .venv/bin/python -m bench.real_size [--families whisper,nllb,mms_tts,diarization]
        [--work /tmp/polydub-real-size] [--out bench/results] [--no-triton]
        [--reuse bench/results/real_size-*.json]  # Triton again over earlier exports

Each family needs free memory (``NEEDS_GIB``) before it starts, measured as MemAvailable (or the
cgroup's room); with less it is refused with a message and the others go on.

``--preset large --layers N`` builds Whisper large-v3 and NLLB-200-3.3B at their real width with N
encoder and N decoder layers instead (``bench.large_shape``; ``bench.large_size`` runs it at
several depths and extrapolates), and ``--requests R`` makes each family's inference R requests
at once (the tree's peak RSS while they run is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS, TEMPLATES
from bench.large_shape import LARGE_REPOS, build_large, scale_to_depth
from polydub.export.hub import available_memory

GIB = 2**30
FAMILIES = ("whisper", "nllb", "mms_tts", "diarization")
# Free memory a family's build or export needs before it starts (measured peaks plus headroom).
NEEDS_GIB = {"whisper": 4.0, "nllb": 13.0, "mms_tts": 4.0, "diarization": 3.0}
NEEDS_GIB_LARGE = {"whisper": 6.0, "nllb": 16.0}  # at 1-2 layers: the embeddings dominate
# A child is stopped when the machine's free memory falls below this while it runs.
FLOOR_BYTES = GIB
POLL_S = 0.5
# family -> {model key for ``--model``: Hub repository id}
REPOS: dict[str, dict[str, str]] = {
    "whisper": {"whisper": "openai/whisper-base"},
    "nllb": {"nllb": "facebook/nllb-200-distilled-600M"},
    "mms_tts": {f"mms_tts_{c}": f"facebook/mms-tts-{c}" for c in ("spa", "fra", "deu", "eng")},
    "diarization": {
        "speaker_embedding": "pyannote/wespeaker-voxceleb-resnet34-LM",
        "pyannote_segmentation": "pyannote/segmentation-3.0",
    },
}


@dataclass(frozen=True)
class Shape:
    """Which checkpoints: the ``small`` preset's at their real size, or the ``large`` preset's at
    their real width with ``layers`` encoder and decoder layers."""

    preset: str = "small"
    layers: int = 0

    def argv(self) -> list[str]:
        return ["--preset", self.preset, "--layers", str(self.layers)]

    def __str__(self) -> str:
        return self.preset if self.preset == "small" else f"large, {self.layers} layers"


# Served models a family writes that its report does not list (shared by every voice).
COMPANIONS = {"mms_tts": ("mms_tts_tokenizer",)}
# The machine the verdict is for, and what the rest of the stack takes on it (PostgreSQL, NATS,
# MinIO, API, worker, OS): an allowance, not measured here.
TARGET_GIB = 24.0
REST_OF_STACK_GIB = 3.0


# ----------------------------------------------------------------------------- children


def repos_of(family: str, shape: Shape) -> dict[str, str]:
    """model key for ``--model`` -> repository id, at the shape's preset."""
    if shape.preset == "large":
        return {family: LARGE_REPOS[family]}
    return REPOS[family]


def child_build(family: str, work: Path, shape: Shape) -> dict[str, Any]:
    """Build the family's repositories at real scale (skipped when a finished build is there)."""
    from tests.hub.build import build_repo

    built = {}
    for repo_id in repos_of(family, shape).values():
        out = work / "hub" / repo_id
        marker = out / ".real-size-built"
        if not marker.exists():
            if shape.preset == "large":
                build_large(family, out, shape.layers)
            else:
                build_repo(repo_id, out, scale="real")
            marker.write_text(f"{shape}\n")
        built[repo_id] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"checkpoint_bytes": built}


def child_export(family: str, work: Path, shape: Shape) -> dict[str, Any]:
    """polydub's export of the family from the local checkpoints (``--model KEY=DIR``)."""
    from polydub.export.plan import ModelChoice, make_plan
    from polydub.export.run import export_all
    from polydub.export.spec import Preset, Target

    repos = repos_of(family, shape).items()
    choices = [ModelChoice.parse(f"{k}={work / 'hub' / r}") for k, r in repos]
    plan = make_plan(Preset(shape.preset), choices, families=[family])
    started = time.perf_counter()
    result = export_all(plan, Target.CPU, work / "repository", TEMPLATES)
    seconds = time.perf_counter() - started
    (report,) = result.reports
    return {
        "export_s": seconds,
        "models": report.models,
        "precision": report.precision,
        "max_abs_diff": report.max_abs_diff,
        "int8_max_abs_diff": report.int8_max_abs_diff,
        "notes": report.notes,
    }


def run_child(phase: str, family: str, work: Path, shape: Shape) -> dict[str, Any]:
    """One phase of one family in a child process: its result, wall time, peak RSS, CPU time."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path, result_path = logs / f"{family}-{phase}.log", logs / f"{family}-{phase}.json"
    result_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "bench.real_size", "--child", phase, "--families", family]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--work", str(work), *shape.argv()],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the guard below stops all of it
        )
        aborted = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            free = available_memory()
            if free < FLOOR_BYTES and aborted is None:
                # Other work on the machine (or this export) is about to exhaust memory: stop
                # this child before the kernel's OOM killer picks someone else's process.
                aborted = f"stopped: free memory fell to {free / GIB:.1f} GiB"
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(POLL_S)
    proc.returncode = os.waitstatus_to_exitcode(status)
    measured: dict[str, Any] = {
        "wall_s": time.perf_counter() - started,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "log": str(log_path),
    }
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        return {**measured, "error": aborted or f"exit {proc.returncode}", "log_tail": tail}
    return {**measured, **json.loads(result_path.read_text())}


# ----------------------------------------------------------------------------- parent


def folder_bytes(path: Path) -> int:
    """Bytes on disk, each file once: exporters hard-link a graph served as is to its fp32 name."""
    sizes: dict[tuple[int, int], int] = {}
    for file in (p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(sizes.values())


def served_bytes(path: Path) -> int:
    """What Triton reads: model.onnx (and its external data) or the python model's files."""
    version = path / "1"
    onnx = [p for p in version.glob("model.onnx*") if p.is_file()]
    return sum(p.stat().st_size for p in onnx) if onnx else folder_bytes(version)


def with_companions(family: str, models: list[str], work: Path) -> list[str]:
    extra = [m for m in COMPANIONS.get(family, ()) if (work / "repository" / m).is_dir()]
    return [*models, *(m for m in extra if m not in models)]


def disk_of(work: Path, models: list[str]) -> dict[str, dict[str, int]]:
    folders = {m: work / "repository" / m for m in models}
    return {
        m: {"folder_bytes": folder_bytes(f), "served_bytes": served_bytes(f)}
        for m, f in folders.items()
    }


def room_for(family: str, shape: Shape) -> str | None:
    """None when the family may start; else why not (free memory below its need)."""
    free = available_memory() / GIB
    need = (NEEDS_GIB_LARGE if shape.preset == "large" else NEEDS_GIB)[family]
    if free < need:
        return (
            f"{family}: refused, {free:.1f} GiB of memory is available and it needs "
            f"{need:.1f} GiB (other work on this machine?): run it later or alone"
        )
    return None


def export_families(families: list[str], work: Path, shape: Shape) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for family in families:
        entry: dict[str, Any] = {}
        results[family] = entry
        for phase in ("build", "export"):
            refused = room_for(family, shape)
            if refused:
                print(refused, flush=True)
                entry["refused"] = refused
                break
            print(f"{family}: {phase} ...", flush=True)
            entry[phase] = run_child(phase, family, work, shape)
            if "error" in entry[phase]:
                why, log = entry[phase]["error"], entry[phase]["log"]
                print(f"{family}: {phase} failed ({why}); log {log}:", flush=True)
                print("\n".join(entry[phase]["log_tail"]), flush=True)
                break
            print(
                f"{family}: {phase} {entry[phase]['wall_s']:.0f}s, "
                f"peak RSS {entry[phase]['peak_rss_bytes'] / GIB:.2f} GiB",
                flush=True,
            )
        export = entry.get("export", {})
        if "models" in export:
            export["models"] = with_companions(family, export["models"], work)
        entry["disk"] = disk_of(work, export.get("models", []))
    return results


def reuse_exports(paths: list[Path], families: list[str], work: Path) -> dict[str, Any]:
    """Families whose export an earlier run measured (the latest file wins), with the disk of
    their model folders in this run's repository."""
    reused: dict[str, Any] = {}
    for path in paths:
        for family, entry in json.loads(path.read_text())["families"].items():
            export = entry.get("export", {})
            if family in families and "models" in export and "error" not in export:
                entry["reused_from"] = str(path)
                reused[family] = entry
    for family, entry in reused.items():
        entry["export"]["models"] = with_companions(family, entry["export"]["models"], work)
        entry["disk"] = disk_of(work, entry["export"]["models"])
    return reused


def verdict(results: dict[str, dict[str, Any]], serving: dict[str, Any] | None) -> list[str]:
    """What fits on a 2-core / 24 GB machine, from the measured figures."""
    lines = []
    serve_gib = (serving or {}).get("total_pss_bytes", 0) / GIB
    room = TARGET_GIB - REST_OF_STACK_GIB
    for family, entry in results.items():
        export = entry.get("export", {})
        if "peak_rss_bytes" not in export or "error" in export:
            lines.append(f"{family}: not measured ({entry.get('refused') or 'export failed'})")
            continue
        peak = export["peak_rss_bytes"] / GIB
        if peak + serve_gib <= room:
            how = "fits beside the serving stack"
        elif peak <= room:
            how = "fits only with the stack's models unloaded (export first, then serve)"
        else:
            how = "does NOT fit"
        margin = room - peak - serve_gib
        lines.append(f"{family}: export peak {peak:.1f} GiB: {how} (margin {margin:+.1f} GiB)")
    if serving:
        total = serve_gib + REST_OF_STACK_GIB
        lines.append(
            f"serving every model: Triton tree {serve_gib:.2f} GiB PSS + ~{REST_OF_STACK_GIB:.0f} "
            f"GiB rest of stack = {total:.1f} GiB of {TARGET_GIB:.0f}: "
            + ("fits" if total <= TARGET_GIB else "does NOT fit")
        )
    return lines


def table(results: dict[str, dict[str, Any]], serving: dict[str, Any] | None) -> str:
    head = (
        f"{'model':<24}{'export s':>9}{'peak GiB':>9}{'disk MiB':>9}{'served MiB':>11}"
        f"{'load s':>8}{'+PSS MiB':>9}{'+RSS MiB':>9}{'+infer MiB':>11}"
    )
    rows = [head, "-" * len(head)]
    loads = (serving or {}).get("models", {})
    inference = (serving or {}).get("inference", {})
    for family, entry in results.items():
        export = entry.get("export", {})
        seconds = f"{export['export_s']:.0f}" if "export_s" in export else "-"
        peak = f"{export['peak_rss_bytes'] / GIB:.2f}" if "peak_rss_bytes" in export else "-"
        rows.append(f"[{family}]{'':<{22 - len(family)}}{seconds:>9}{peak:>9}")
        for model, disk in entry.get("disk", {}).items():
            load = loads.get(model, {})
            cells = ["-", "-", "-"]
            if "load_s" in load:
                cells = [
                    f"{load['load_s']:.1f}",
                    f"{load['pss_delta_bytes'] / 2**20:.0f}",
                    f"{load['rss_delta_bytes'] / 2**20:.0f}",
                ]
            elif "error" in load:
                cells = ["FAIL", "-", "-"]
            rows.append(
                f"  {model:<22}{'':>9}{'':>9}{disk['folder_bytes'] / 2**20:>9.0f}"
                f"{disk['served_bytes'] / 2**20:>11.0f}{cells[0]:>8}{cells[1]:>9}{cells[2]:>9}"
            )
        done = inference.get(family, {})
        if "pss_delta_bytes" in done:
            rows.append(
                f"  {'(one inference)':<22}{'':>64}{done['pss_delta_bytes'] / 2**20:>11.0f}"
            )
    if serving:
        rows.append(
            f"Triton tree: {serving['baseline_pss_bytes'] / 2**20:.0f} MiB PSS empty, "
            f"{serving['total_pss_bytes'] / GIB:.2f} GiB PSS / "
            f"{serving['total_rss_bytes'] / GIB:.2f} GiB RSS with every model loaded and used"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.real_size", description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/polydub-real-size"))
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--no-triton", action="store_true", help="export and measure disk only")
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="*",
        default=[],
        help="earlier results JSON: their exported families are measured in Triton again, not "
        "exported again (their model folders must be in WORK/repository)",
    )
    parser.add_argument("--preset", choices=("small", "large"), default="small")
    parser.add_argument(
        "--layers", type=int, default=0, help="with --preset large: encoder and decoder layers"
    )
    parser.add_argument(
        "--requests", type=int, default=1, help="requests at once in each family's inference"
    )
    parser.add_argument("--child", choices=("build", "export"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    known = FAMILIES if args.preset == "small" else tuple(LARGE_REPOS)
    unknown = set(families) - set(known)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {', '.join(known)}")
    if (args.preset == "large") != (args.layers > 0):
        parser.error("--layers N (>= 1) goes with --preset large, and only with it")
    shape = Shape(args.preset, args.layers)
    work: Path = args.work.resolve()
    if args.child:
        import logging

        # polydub's progress only: onnxruntime's quantizer logs a line per tensor on the root.
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("polydub").setLevel(logging.INFO)
        run = child_build if args.child == "build" else child_export
        data = run(families[0], work, shape)
        (work / "logs" / f"{families[0]}-{args.child}.json").write_text(json.dumps(data))
        return 0

    started = time.perf_counter()
    reused = reuse_exports(args.reuse, families, work)
    fresh = export_families([f for f in families if f not in reused], work, shape)
    results = {f: reused.get(f) or fresh[f] for f in families}
    serving = None
    if not args.no_triton:
        from bench.real_size_triton import measure_serving

        exported = {
            f: e["export"]["models"] for f, e in results.items() if "models" in e.get("export", {})
        }
        if shape.preset == "large":
            scaled = scale_to_depth(TEMPLATES, work / "repository", shape.layers)
            if scaled is not None:
                print(f"whisper cross_cache_mib scaled to {shape.layers} layers: {scaled} MiB")
        serving = measure_serving(work, exported, args.requests)
    print(table(results, serving))
    lines = verdict(results, serving)
    print("\n".join(["", f"On a 2-core / {TARGET_GIB:.0f} GB machine:", *lines]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"real_size-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "shape": {"preset": shape.preset, "layers": shape.layers, "requests": args.requests},
        "families": results,
        "serving": serving,
        "verdict": lines,
        "wall_s": time.perf_counter() - started,
    }
    path.write_text(json.dumps(data, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
