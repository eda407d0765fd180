"""Resident memory of NLLB at NLLB-200-distilled-600M's shape: the served int8 graphs against the
same graphs with their token embeddings left in fp32 (the recipe before issue 17), and
CTranslate2 int8 on the same weights (the peer), each in its own process (issue 17, items 1, 7).

Reuses ``bench.translation``'s work folder (its random real-width checkpoint, export and
CTranslate2 conversion: run that benchmark first, or pass ``--prepare``). Each system loads its
model, translates 16 sentences (beam 4, 60 tokens forced; polydub with the served defaults, a
search per core) and reports its resident set after loading, its peak, and its files' size on
disk.

    .venv/bin/python -m bench.nllb_memory [--layers 12] [--work /tmp/polydub-translation]
        [--systems ort-int8,ct2-int8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from bench.common import save
from bench.translation import BEAMS, SRC, TGT, ct2_dir, repository_dir, run_child, sentences

SYSTEMS = ("ort-int8", "ort-int8-fp32-embeddings", "ct2-int8")
LENGTH = 60
GIB = 2**30


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _fp32_embedding_graphs(version: Path, out: Path) -> tuple[Path, Path]:
    """The served graphs' recipe without ``token_embeddings``: int8 MatMul/Gemm only."""
    from polydub.export.onnx_tools import quantize_int8

    paths = []
    for stem in ("encoder", "decoder"):
        source, dst = version / f"{stem}_fp32.onnx", out / stem / "model.onnx"
        # made again when the export is newer (a graph change would make the old one unloadable)
        if not dst.exists() or dst.stat().st_mtime < source.stat().st_mtime:
            quantize_int8(source, dst)
        paths.append(dst)
    return paths[0], paths[1]


def _bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for path in paths for p in path.parent.glob(f"{path.name}*"))


def child(system: str, work: Path, layers: int) -> dict[str, Any]:
    from polydub.serving.nllb_ort import OrtNllb
    from polydub.serving.nllb_search import GenerationConfig
    from polydub.serving.nllb_service import TOKENIZER_DIR, cpu_share
    from polydub.serving.nllb_translate import NllbCodec, TranslationItem, Translator

    version = repository_dir(work, layers) / "nllb" / "1"
    codec = NllbCodec(version / TOKENIZER_DIR)
    texts = sentences(codec, 16)
    base = _rss()
    if system == "ct2-int8":
        import ctranslate2

        path = ct2_dir(work, layers)
        translator = ctranslate2.Translator(str(path), device="cpu", compute_type="int8")
        loaded = _rss()
        tokens = codec.tokenizer
        translator.translate_batch(
            [[tokens.id_to_token(i) for i in codec.encode(t, SRC, 1024)] for t in texts],
            target_prefix=[[TGT]] * len(texts),
            beam_size=BEAMS,
            min_decoding_length=LENGTH,
            max_decoding_length=LENGTH,
        )
        disk = sum(p.stat().st_size for p in path.iterdir())
    else:
        if system == "ort-int8":
            encoder, decoder = version / "encoder.onnx", version / "decoder.onnx"
        else:
            encoder, decoder = _fp32_embedding_graphs(version, work / f"fp32-embeddings-{layers}")
        searches, threads = cpu_share(0, 0)  # the served model's defaults
        graphs = OrtNllb(encoder, decoder, threads=threads)
        loaded = _rss()
        config = GenerationConfig.load(version / TOKENIZER_DIR)
        search = Translator(codec, graphs, config, searches=searches)
        search.translate([TranslationItem(t, SRC, TGT, BEAMS, 1, LENGTH + 1) for t in texts])
        disk = _bytes(encoder, decoder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "loaded_gib": (loaded - base) / GIB,
        "after_translation_gib": (_rss() - base) / GIB,
        "peak_gib": peak / GIB,
        "disk_gib": disk / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--work", type=Path, default=Path("/tmp/polydub-translation"))
    parser.add_argument("--prepare", action="store_true", help="build, export and convert first")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="a comma-separated subset")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.work, args.layers)))
        return
    if args.prepare:
        for phase in ("build", "export", "convert"):
            run_child(phase, args.work, args.layers)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems {sorted(set(systems) - set(SYSTEMS))}; known: {SYSTEMS}")
    results: dict[str, Any] = {}
    for system in systems:
        argv = [sys.executable, "-m", "bench.nllb_memory", "--child", system]
        argv += ["--work", str(args.work), "--layers", str(args.layers)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        results[system] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"NLLB at real width, {args.layers}+{args.layers} layers, 16 sentences, beam 4")
    print(f"{'system':<26}{'disk GiB':>10}{'loaded GiB':>12}{'after GiB':>11}{'peak GiB':>10}")
    for system, row in results.items():
        print(
            f"{system:<26}{row['disk_gib']:>10.2f}{row['loaded_gib']:>12.2f}"
            f"{row['after_translation_gib']:>11.2f}{row['peak_gib']:>10.2f}"
        )
    save("nllb_memory", {"layers": args.layers, "systems": results})


if __name__ == "__main__":
    main()
