"""The ``large`` preset's memory, from exports at its real width and a few depths (issue 17, item 7).

Whisper large-v3 (32 + 32 layers) and NLLB-200-3.3B (24 + 24) cannot be exported on a 24 GB
machine. Their layers are all the same size, so ``bench.real_size --preset large --layers N``
(``bench.large_shape``: the published width, N encoder and N decoder layers, random weights) is
run at a few depths, one family and one depth at a time, and every figure is fitted as
``a + b * layers`` and read at the real depth:

* export: the export's peak RSS (a child process, ``wait4``) and the served graphs on disk;
* serving, the tritonserver tree with the shipped config (Whisper: 2 instances; NLLB: 1): RSS
  after loading, and the peak while a working load runs (``--requests``: Whisper 32 windows of
  30 s decoding 32 tokens, two full batches of 16; NLLB 16 sentences translated to 60 tokens
  with the served beams), as the tree's sum and as its largest process (one instance's stub);
* NLLB's peer on the same weights (``bench.nllb_memory``'s children, each its own process):
  CTranslate2 int8 beside polydub's graphs in-process, 16 sentences x 4 beams x 60 tokens.

What is not linear in depth (a layer's attention scores, the runtime, the embeddings) sits in
``a``; what is (weights, each layer's cross-attention K/V and decoder cache) in ``b``. With
three or more depths the fit's largest residual is reported: a check that the model holds.

    .venv/bin/python -m bench.large_size [--families whisper,nllb] [--layers whisper=1/2/4,nllb=1/2]
        [--work /tmp/polydub-large-size] [--requests whisper=32,nllb=16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import save
from bench.large_shape import LARGE_REPOS, real_layers

GIB = 2**30
REQUESTS = {"whisper": 32, "nllb": 16}
# Whisper's layers are small: three depths check the line. NLLB's embeddings alone are 2.1 GB of
# float32 and its export peaks at several times its weights: two depths fit this machine.
DEPTHS = {"whisper": (1, 2, 4), "nllb": (1, 2)}
# the figures read from one bench.real_size result of one family (``figures``)
FIGURES = ("export peak", "served on disk", "loaded", "working peak", "instance peak")
# NLLB's peer, in its own process on the same weights (bench.nllb_memory's children): polydub's
# served graphs in-process with the served defaults, and CTranslate2 int8, each translating 16
# sentences x 4 beams x 60 tokens.
PEERS = {"ort-int8": "polydub in-process", "ct2-int8": "CTranslate2 int8"}
PEER_FIGURES = tuple(f"{name} {what}" for name in PEERS.values() for what in ("loaded", "peak"))


def run_depth(family: str, layers: int, work: Path, requests: int) -> dict[str, Any]:
    """``bench.real_size`` for one family at one depth (its JSON reused when there)."""
    folder = work / f"{family}-{layers}"
    done = folder / "result.json"
    if done.exists():
        result: dict[str, Any] = json.loads(done.read_text())
    else:
        result = measure_depth(family, layers, folder, requests)
    if family == "nllb" and "peers" not in result:
        result["peers"] = nllb_peers(folder, layers)
    done.write_text(json.dumps(result))
    return result


def measure_depth(family: str, layers: int, folder: Path, requests: int) -> dict[str, Any]:
    out = folder / "results"
    argv = [sys.executable, "-m", "bench.real_size", "--preset", "large"]
    earlier = sorted(out.glob("real_size-*.json"))
    if earlier:  # exported before: Triton again over that export
        argv += ["--reuse", str(earlier[0])]
    argv += ["--layers", str(layers), "--families", family, "--requests", str(requests)]
    argv += ["--work", str(folder), "--out", str(out)]
    print(f"{family}, {layers} layers: {' '.join(argv[1:])}", flush=True)
    subprocess.run(argv, check=True)
    (latest,) = sorted(out.glob("real_size-*.json"))[-1:]
    return dict(json.loads(latest.read_text()))


def nllb_peers(folder: Path, layers: int) -> dict[str, Any]:
    """CTranslate2's conversion of the same checkpoint, then each peer's memory in a child, in
    the folder layout ``bench.translation`` and ``bench.nllb_memory`` read."""
    peer = folder / "peer"
    peer.mkdir(exist_ok=True)
    links = {
        f"hub-{layers}": folder / "hub" / LARGE_REPOS["nllb"],
        f"repository-{layers}": folder / "repository",
    }
    for name, target in links.items():
        (peer / name).unlink(missing_ok=True)
        (peer / name).symlink_to(target)
    depth = ["--work", str(peer), "--layers", str(layers)]
    convert = [sys.executable, "-m", "bench.translation", "--child", "convert", *depth]
    subprocess.run(convert, check=True)
    found = {}
    for system in PEERS:
        argv = [sys.executable, "-m", "bench.nllb_memory", "--child", system, *depth]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        found[system] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def figures(family: str, result: dict[str, Any], folder: Path) -> dict[str, float]:
    """The figures of one run, in GiB (missing ones left out: that run failed there)."""
    entry = result["families"][family]
    serving = result.get("serving") or {}
    found: dict[str, float] = {}
    export = entry.get("export", {})
    if "peak_rss_bytes" in export and "error" not in export:
        found["export peak"] = export["peak_rss_bytes"] / GIB
    version = folder / "repository" / family / "1"
    if version.is_dir():
        served = [p for p in version.iterdir() if p.suffix == ".onnx" and "_fp32" not in p.name]
        found["served on disk"] = sum(p.stat().st_size for p in served) / GIB
    load = serving.get("models", {}).get(family, {})
    if "rss_delta_bytes" in load:
        found["loaded"] = (serving["baseline_rss_bytes"] + load["rss_delta_bytes"]) / GIB
    inference = serving.get("inference", {}).get(family, {})
    for system, name in PEERS.items():
        measured = result.get("peers", {}).get(system, {})
        if measured:
            found[f"{name} loaded"] = measured["loaded_gib"]
            found[f"{name} peak"] = measured["peak_gib"]
    if inference.get("tree_peak_rss_bytes") and "error" not in inference:
        found["working peak"] = inference["tree_peak_rss_bytes"] / GIB
        if inference.get("process_peak_rss_bytes"):  # the largest: a python-backend stub
            found["instance peak"] = inference["process_peak_rss_bytes"][0] / GIB
    return found


def fit(depths: list[int], values: list[float], target: int) -> dict[str, float]:
    """``a + b * layers`` by least squares, read at ``target`` layers."""
    slope, intercept = np.polyfit(np.array(depths, float), np.array(values, float), 1)
    residual = max(abs(v - (intercept + slope * d)) for d, v in zip(depths, values, strict=True))
    return {
        "fixed_gib": float(intercept),
        "per_layer_gib": float(slope),
        "at_real_depth_gib": float(intercept + slope * target),
        "max_residual_gib": float(residual),
    }


def summarize(family: str, per_depth: dict[int, dict[str, float]]) -> dict[str, Any]:
    target = real_layers(family)
    summary: dict[str, Any] = {"real_layers": target, "measured": per_depth, "fits": {}}
    for figure in (*FIGURES, *PEER_FIGURES):
        depths = [d for d in sorted(per_depth) if figure in per_depth[d]]
        if len(depths) >= 2:
            values = [per_depth[d][figure] for d in depths]
            summary["fits"][figure] = fit(depths, values, target)
    return summary


def table(summaries: dict[str, dict[str, Any]]) -> str:
    depths = sorted({d for s in summaries.values() for d in s["measured"]})
    head = f"{'model':<9}{'figure (GiB)':<30}" + "".join(f"{f'{d} layers':>10}" for d in depths)
    head += f"{'fixed':>8}{'/layer':>8}{'residual':>10}{'at real':>9}"
    rows = [head, "-" * len(head)]
    for family, summary in summaries.items():
        for figure in (f for f in (*FIGURES, *PEER_FIGURES) if f in summary["fits"]):
            cells = [summary["measured"].get(d, {}).get(figure) for d in depths]
            row = f"{family:<9}{figure:<30}" + "".join(
                f"{c:>10.2f}" if c is not None else f"{'-':>10}" for c in cells
            )
            fitted = summary["fits"].get(figure)
            if fitted:
                # two depths always lie on their line: a residual says something from three
                measured = sum(c is not None for c in cells)
                residual = f"{fitted['max_residual_gib']:.2f}" if measured > 2 else "-"
                row += f"{fitted['fixed_gib']:>8.2f}{fitted['per_layer_gib']:>8.3f}"
                row += f"{residual:>10}{fitted['at_real_depth_gib']:>9.2f}"
            rows.append(row)
        rows.append(f"{'':<9}(real depth: {summary['real_layers']} + {summary['real_layers']})")
    return "\n".join(rows)


def parse_requests(text: str) -> dict[str, int]:
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {**REQUESTS, **{k.strip(): int(v) for k, v in pairs}}


def parse_depths(text: str) -> dict[str, tuple[int, ...]]:
    """``whisper=1/2/4,nllb=1/2``: two or more depths per family, each >= 1."""
    depths = dict(DEPTHS)
    for item in (i for i in text.split(",") if i.strip()):
        family, _, values = item.partition("=")
        chosen = tuple(sorted({int(v) for v in values.split("/") if v.strip()}))
        if len(chosen) < 2 or chosen[0] < 1:
            raise argparse.ArgumentTypeError(f"{item}: two or more depths, each >= 1")
        depths[family.strip()] = chosen
    return depths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.large_size", description=__doc__.split("\n")[0])
    parser.add_argument("--families", default="whisper,nllb")
    parser.add_argument(
        "--layers", type=parse_depths, default=dict(DEPTHS), help="e.g. whisper=1/2/4,nllb=1/2"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/polydub-large-size"))
    parser.add_argument("--requests", type=parse_requests, default=dict(REQUESTS))
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    work: Path = args.work.resolve()
    started = time.perf_counter()
    summaries = {}
    for family in families:
        per_depth = {}
        for layers in args.layers[family]:
            result = run_depth(family, layers, work, args.requests[family])
            per_depth[layers] = figures(family, result, work / f"{family}-{layers}")
        summaries[family] = summarize(family, per_depth)
    print(table(summaries))
    path = save(
        "large_size",
        {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "requests": args.requests,
            "families": summaries,
            "wall_s": time.perf_counter() - started,
        },
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
