"""Int8 recipes for real whisper-base (the bundled checkpoint) on espeak-ng English sentences.

For each recipe, both graphs are quantized from the exported fp32 ones and measured on
``--clips`` sentences (export/speech_clips.py), English, greedy, as the BLS decodes:

* batch_same: clips whose tokens decoded alone equal their tokens in a batch of 8 clips;
* fp32_agree: clips whose tokens (alone) equal the fp32 graphs' (alone);
* wer: word error rate against the sentences that were spoken (all clips, alone);
* enc_MB / dec_MB: file sizes;
* encode8 / decode8: seconds for the encoder on 8 clips, and for features + encoder + greedy
  decode of 8 clips, ``--threads`` intra-op threads; wall = best of 2 runs, cpu = process CPU
  seconds of that run (the host may be shared: cpu moves less with the load than wall).

Recipes: ``fp32``; ``dynamic`` (onnx_tools.quantize_int8: per-tensor activation scale);
``w8bN`` (weight-only MatMulNBits int8, block N, fp32 compute); ``w8bNa8`` (the same with
int8 compute, activations quantized per row and block: accuracy_level 4).

    .venv/bin/python -m bench.whisper_int8 --repo /tmp/whisper-base [--recipes fp32,dynamic,...]

``--repo``: a repository the Whisper exporter wrote from the bundled checkpoint (written there
first when it has no whisper/1/encoder_fp32.onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polydub.export import speech_clips
from polydub.export.onnx_tools import quantize_int8, quantize_weights_int8
from polydub.export.wer import pooled_word_error_rate
from polydub.export.whisper_graphs import DECODER_MODEL, ENCODER_MODEL, graph_path
from polydub.export.whisper_reference import OrtWhisper
from polydub.serving import whisper_decode, whisper_features, whisper_text

Quantize = Callable[[Path, Path], Any]


def recipe(name: str) -> Quantize | None:
    if name == "fp32":
        return None
    if name == "dynamic":
        return quantize_int8
    if name.startswith("w8b"):
        block, _, compute = name[3:].partition("a")
        level = 4 if compute == "8" else None
        return lambda src, dst: quantize_weights_int8(src, dst, int(block), level)
    raise ValueError(f"unknown recipe {name!r}")


def ensure_export(repo: Path) -> None:
    if graph_path(repo, ENCODER_MODEL, "_fp32").is_file():
        return
    from polydub.export.ct2_whisper import bundled_checkpoint
    from polydub.export.spec import Checkpoint, Target
    from polydub.export.whisper import WhisperExporter

    checkpoint = Checkpoint(str(bundled_checkpoint()), "MIT")
    WhisperExporter().export({"whisper": checkpoint}, Target.CPU, repo)


def measure(
    name: str, repo: Path, work: Path, clips: list[tuple[str, Any]], threads: int, tokens: int
) -> dict[str, Any]:
    encoder, decoder = (
        graph_path(repo, ENCODER_MODEL, "_fp32"),
        graph_path(repo, DECODER_MODEL, "_fp32"),
    )
    quantize = recipe(name)
    if quantize is not None:
        encoder, decoder = work / f"encoder_{name}.onnx", work / f"decoder_{name}.onnx"
        quantize(graph_path(repo, ENCODER_MODEL, "_fp32"), encoder)
        quantize(graph_path(repo, DECODER_MODEL, "_fp32"), decoder)
    tokenizer = repo / "whisper" / "1" / "tokenizer"
    facts = whisper_text.WhisperFacts.load(tokenizer / whisper_text.FACTS_FILE)
    detokenizer = whisper_text.Detokenizer.load(str(tokenizer), facts.eot)
    model = OrtWhisper(encoder, decoder, facts, threads=threads)
    options = [whisper_decode.DecodeOptions("en", "transcribe")]
    audio = [a for _, a in clips]
    alone = [model.decode([a], options, tokens)[0].tokens for a in audio]
    batched: list[list[int]] = []
    for k in range(0, len(audio), 8):
        batched += [r.tokens for r in model.decode(audio[k : k + 8], options * 8, tokens)]
    features = whisper_features.log_mel_spectrogram(audio[:8], facts.n_mels)
    encode, full = [], []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        model.encode(features)
        encode.append((time.perf_counter() - wall, time.process_time() - cpu))
        wall, cpu = time.perf_counter(), time.process_time()
        model.decode(audio[:8], options * 8, tokens)
        full.append((time.perf_counter() - wall, time.process_time() - cpu))
    reference_file = work / "fp32_tokens.json"
    if name == "fp32":
        reference_file.write_text(json.dumps(alone))
    reference = json.loads(reference_file.read_text()) if reference_file.is_file() else None
    n = len(audio)
    return {
        "recipe": name,
        "batch_same": f"{sum(a == b for a, b in zip(alone, batched, strict=True))}/{n}",
        "fp32_agree": (
            f"{sum(a == b for a, b in zip(alone, reference, strict=True))}/{n}"
            if reference
            else "-"
        ),
        "wer": round(
            pooled_word_error_rate(
                (t, detokenizer.decode(a)) for (t, _), a in zip(clips, alone, strict=True)
            ),
            4,
        ),
        "enc_MB": round(encoder.stat().st_size / 1e6, 1),
        "dec_MB": round(decoder.stat().st_size / 1e6, 1),
        "encode8_wall": round(min(encode)[0], 2),
        "encode8_cpu": round(min(encode)[1], 2),
        "decode8_wall": round(min(full)[0], 2),
        "decode8_cpu": round(min(full)[1], 2),
        "load1": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--recipes", default="fp32,dynamic,w8b32,w8b32a8,w8b128a8")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    ensure_export(args.repo)
    work = args.repo / "int8-bench"
    work.mkdir(exist_ok=True)
    clips = speech_clips.speech(args.clips)
    if clips is None:
        raise SystemExit("espeak-ng is needed: apt-get install espeak-ng")
    for name in args.recipes.split(","):
        print(
            json.dumps(measure(name, args.repo, work, clips, args.threads, args.tokens)), flush=True
        )


if __name__ == "__main__":
    main()
