"""ASR throughput with whisper-base dimensions: Triton vs faster-whisper vs transformers.

One run, the same audio, the same checkpoint and the same number of decoded tokens for every
system; throughput is audio seconds per wall second at 1, 4 and 16 concurrent requests:

* ``triton``: the ``whisper`` BLS model served by a private Triton, through ``AsrClient``
  (one request per clip, ``concurrency`` requests in flight; Triton's dynamic batcher groups them);
* ``onnxruntime``: the same exported graphs and the same decoding loop (``whisper_runtime``) run in
  this process on batches of ``concurrency`` clips: Triton's serving overhead is the difference;
* ``faster-whisper``: the same checkpoint converted with ctranslate2's ``TransformersConverter``
  (int8), ``WhisperModel(compute_type="int8").model.generate`` on batches of ``concurrency``;
* ``transformers``: ``generate`` (torch CPU, fp32, SDPA attention, KV cache) on batches of
  ``concurrency``, with Whisper's own logits processors (timestamps).

The checkpoint: a WhisperForConditionalGeneration with whisper-base's sizes (d_model 512, 6 + 6
layers, 8 heads, 80 mels, vocabulary 51865) and fixed-seed random weights, built offline; the
cost is in the shapes. Random weights rarely emit end-of-text, and every system is forced to
decode exactly ``--tokens`` tokens per clip anyway (min = max new tokens, or end-of-text
suppressed); the decoded counts are printed. Every system times its own feature extraction.

    .venv/bin/python -m bench.asr [--tokens 96] [--levels 1,4,16] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import private_stack, save

SAMPLE_RATE = 16000
SEED = 0
BASE_DIMS = {  # openai/whisper-base
    "d_model": 512,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "num_mel_bins": 80,
}
BASE_VOCAB = 51865
CHECKPOINT = "random-whisper-base-dims"
SYSTEMS = ("faster-whisper", "transformers")  # besides triton and onnxruntime, always run
SENTENCES = (
    "The weather was calm when the ferry left the harbour early in the morning.",
    "Nobody expected the meeting to last for more than three hours.",
    "She opened the window and listened to the rain falling on the roofs.",
    "Our train was delayed, so we walked across the old bridge into town.",
    "He explained the plan twice, slowly, and then everybody agreed.",
    "The museum keeps a collection of maps drawn by sailors long ago.",
)

Audio = NDArray[np.float32]
THREADS = (
    "triton: the whisper BLS's onnxruntime sessions, intra_op_threads 0 (one per core: {n} here)"
    "; onnxruntime in-process: intra_op_num_threads={n}; faster-whisper: cpu_threads={n} "
    "(intra_threads), num_workers=1; transformers: torch.set_num_threads({n})"
)


@dataclass
class Run:
    system: str
    concurrency: int
    clips: int
    audio_s: float
    wall_s: float  # the median of ``walls``
    tokens: list[int] = field(default_factory=list)  # decoded per clip
    walls: list[float] = field(default_factory=list)  # every repeat
    load: float = 0.0  # 1-minute load average when the run ended

    @property
    def throughput(self) -> float:
        return self.audio_s / self.wall_s


# ------------------------------------------------------------------------------ inputs


def make_clips(count: int, low_s: float = 20.0, high_s: float = 30.0) -> list[Audio]:
    """``count`` different clips of espeak-ng speech between ``low_s`` and ``high_s`` seconds."""
    from polydub.samples import FEMALE_VOICE, MALE_VOICE, espeak

    rng = np.random.default_rng(SEED)
    voices = (MALE_VOICE, FEMALE_VOICE)
    spoken = {
        (i, v): espeak(s, voices[v], sample_rate=SAMPLE_RATE)
        for i, s in enumerate(SENTENCES)
        for v in range(2)
    }
    clips = []
    for k in range(count):
        target = int((low_s + (high_s - low_s) * k / max(1, count - 1)) * SAMPLE_RATE)
        parts: list[Audio] = []
        size = 0
        while size < target:
            part = spoken[(int(rng.integers(len(SENTENCES))), (k + len(parts)) % 2)]
            gap = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)
            parts += [part, gap]
            size += part.size + gap.size
        clip = np.concatenate(parts)[:target]
        clips.append((clip + 0.003 * rng.standard_normal(target)).astype(np.float32))
    return clips


def build_checkpoint(out: Path) -> None:
    """The random whisper-base-dims checkpoint, saved with save_pretrained (model, generation
    config, slow and fast tokenizer files): every system loads or converts this directory."""
    from transformers import WhisperTokenizerFast

    from polydub.export import whisper_tiny

    tokenizer = whisper_tiny.build_tokenizer(out, vocab_size=BASE_VOCAB)
    model, generation = whisper_tiny.build_model(tokenizer, BASE_DIMS)  # seeded
    assert model.config.vocab_size == BASE_VOCAB
    model.save_pretrained(str(out))
    generation.save_pretrained(str(out))
    # faster-whisper reads tokenizer.json; convert the slow tokenizer beside it.
    fast = WhisperTokenizerFast.from_pretrained(str(out))
    with tempfile.TemporaryDirectory() as tmp:
        fast.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", out / "tokenizer.json")


def load_checkpoint(checkpoint: Path) -> Callable[[Path], tuple[Any, Any, Any, str]]:
    def load(tokenizer_dir: Path) -> tuple[Any, Any, Any, str]:
        from transformers import (
            GenerationConfig,
            WhisperForConditionalGeneration,
            WhisperTokenizer,
        )

        model = WhisperForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
        generation = GenerationConfig.from_pretrained(str(checkpoint))
        model.generation_config = generation
        tokenizer = WhisperTokenizer.from_pretrained(str(checkpoint))
        tokenizer.save_pretrained(str(tokenizer_dir))
        return model, tokenizer, generation, CHECKPOINT

    return load


def token_ids(checkpoint: Path) -> dict[str, int]:
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(str(checkpoint))
    ids = tokenizer.convert_tokens_to_ids
    return {
        "sot": ids("<|startoftranscript|>"),
        "en": ids("<|en|>"),
        "transcribe": ids("<|transcribe|>"),
        "eot": ids("<|endoftext|>"),
        "timestamp_begin": ids("<|notimestamps|>") + 1,
    }


def batches(clips: Sequence[Audio], size: int) -> list[Sequence[Audio]]:
    return [clips[i : i + size] for i in range(0, len(clips), size)]


def clips_at(clips: Sequence[Audio], concurrency: int, min_clips: int) -> Sequence[Audio]:
    return clips[: max(concurrency, min_clips)]


def audio_seconds(clips: Sequence[Audio]) -> float:
    return sum(c.size for c in clips) / SAMPLE_RATE


# ------------------------------------------------------------------------------ systems


Measure = Callable[[Sequence[Audio], int], list[int]]  # (clips, level) -> tokens per clip


async def served_and_local(
    settings: Any,
    clips: Sequence[Audio],
    levels: Sequence[int],
    tokens: int,
    threads: int,
    min_clips: int,
    repeat: int,
) -> tuple[list[Run], dict[str, Any]]:
    """Triton and the same graphs + loop in this process, measured in turns (``repeat`` times
    each, interleaved, so both see the same machine load): the serving overhead."""
    from polydub.clients.triton import InferenceClient
    from polydub.export.whisper import OrtWhisper, runtime
    from polydub.orchestrator.inference.asr import AsrClient

    rt = runtime()
    local = OrtWhisper.from_repository(settings.model_repository, threads=threads)
    options = rt.DecodeOptions("en", "transcribe")

    def decode_local(batch: Sequence[Audio], n: int) -> list[int]:
        features = rt.log_mel_spectrogram(batch, local.facts.n_mels)
        results = rt.greedy_decode(
            local, features, [options] * len(batch), local.facts, n, min_new_tokens=n
        )
        return [len(r.tokens) for r in results]

    def run_local(chosen: Sequence[Audio], level: int) -> list[int]:
        return [n for batch in batches(chosen, level) for n in decode_local(batch, tokens)]

    runs: dict[tuple[str, int], Run] = {}

    def record(system: str, level: int, chosen: Sequence[Audio], wall: float, n: list[int]) -> None:
        run = runs.setdefault(
            (system, level), Run(system, level, len(chosen), audio_seconds(chosen), 0.0, n)
        )
        run.walls.append(wall)
        run.wall_s = float(np.median(run.walls))
        run.load = os.getloadavg()[0]
        assert run.tokens == n, f"{system}: token counts changed between repeats"

    async with InferenceClient(settings.triton_url) as triton:
        client = AsrClient(triton, max_new_tokens=tokens, min_new_tokens=tokens)

        async def run_served(chosen: Sequence[Audio], level: int) -> list[int]:
            gate = asyncio.Semaphore(level)

            async def one(clip: Audio) -> int:
                async with gate:
                    return len((await client.transcribe(clip, language="eng")).tokens)

            return list(await asyncio.gather(*(one(c) for c in chosen)))

        await run_served(clips[:1], 1)  # warm-up: one full decode each
        decode_local(clips[:1], tokens)
        before = await triton.statistics("whisper")
        for level in levels:
            chosen = clips_at(clips, level, min_clips)
            for _ in range(repeat):
                started = time.perf_counter()
                counts = await run_served(chosen, level)
                record("triton", level, chosen, time.perf_counter() - started, counts)
                started = time.perf_counter()
                counts = run_local(chosen, level)
                record("onnxruntime", level, chosen, time.perf_counter() - started, counts)
        after = await triton.statistics("whisper")
    batching = {
        key: int(after.get(key, 0)) - int(before.get(key, 0))
        for key in ("inference_count", "execution_count")
    }
    ordered = [runs[(s, level)] for s in ("triton", "onnxruntime") for level in levels]
    return ordered, batching


def bench_faster_whisper(
    checkpoint: Path,
    clips: Sequence[Audio],
    levels: Sequence[int],
    tokens: int,
    threads: int,
    min_clips: int,
) -> tuple[list[Run], float]:
    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor

    converted = checkpoint.parent / "ct2-int8"
    started = time.perf_counter()
    ctranslate2.converters.TransformersConverter(
        str(checkpoint), copy_files=["tokenizer.json"]
    ).convert(str(converted), quantization="int8", force=True)
    convert_s = time.perf_counter() - started
    model = WhisperModel(str(converted), device="cpu", compute_type="int8", cpu_threads=threads)
    extractor = FeatureExtractor(feature_size=BASE_DIMS["num_mel_bins"])
    ids = token_ids(checkpoint)
    prompt = [ids["sot"], ids["en"], ids["transcribe"]]  # timestamps on: no <|notimestamps|>

    def decode(batch: Sequence[Audio], n: int) -> list[int]:
        window = 30 * SAMPLE_RATE
        features = np.stack(
            [extractor(np.pad(a, (0, window - a.size)))[:, : window // 160] for a in batch]
        )
        results = model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            [prompt] * len(batch),
            beam_size=1,
            # CTranslate2 decodes at most max_length / 2 new tokens for Whisper (whisper.cc)
            max_length=2 * n,
            suppress_tokens=[-1, ids["eot"]],
            return_no_speech_prob=True,
        )
        return [len(r.sequences_ids[0]) for r in results]

    decode(clips[:1], tokens)  # warm-up: one full decode
    return _batched("faster-whisper", clips, levels, tokens, min_clips, decode), convert_s


def bench_transformers(
    checkpoint: Path,
    clips: Sequence[Audio],
    levels: Sequence[int],
    tokens: int,
    threads: int,
    min_clips: int,
) -> list[Run]:
    import torch
    import transformers
    from transformers import GenerationMixin, LogitsProcessorList, WhisperForConditionalGeneration
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    hf: Any = transformers  # untyped
    torch.set_num_threads(threads)
    hf.logging.set_verbosity_error()  # "custom logits processor ... takes precedence"
    model = WhisperForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    extractor = hf.WhisperFeatureExtractor(feature_size=BASE_DIMS["num_mel_bins"])
    generation = copy.deepcopy(model.generation_config)
    processors = LogitsProcessorList(
        [
            SuppressTokensAtBeginLogitsProcessor(generation.begin_suppress_tokens, begin_index=3),
            SuppressTokensLogitsProcessor(generation.suppress_tokens),
            WhisperTimeStampLogitsProcessor(generation, begin_index=3),
        ]
    )
    generation.suppress_tokens = None
    generation.begin_suppress_tokens = None
    ids = token_ids(checkpoint)

    def decode(batch: Sequence[Audio], n: int) -> list[int]:
        features = extractor(
            list(batch), sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features
        prompt = torch.tensor([[ids["sot"], ids["en"], ids["transcribe"]]] * len(batch))
        with torch.inference_mode():
            sequences = GenerationMixin.generate(
                model,
                input_features=features,
                decoder_input_ids=prompt,
                logits_processor=processors,
                generation_config=generation,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                num_beams=1,
            )
        generated = sequences[:, prompt.shape[1] :].tolist()
        return [len([t for t in row if t != ids["eot"]]) for row in generated]

    decode(clips[:1], tokens)  # warm-up: one full decode
    return _batched("transformers", clips, levels, tokens, min_clips, decode)


def _batched(
    system: str,
    clips: Sequence[Audio],
    levels: Sequence[int],
    tokens: int,
    min_clips: int,
    decode: Callable[[Sequence[Audio], int], list[int]],
) -> list[Run]:
    """Batch systems: ``concurrency`` clips per batch, batches one after the other."""
    runs = []
    for level in levels:
        chosen = clips_at(clips, level, min_clips)
        counts: list[int] = []
        started = time.perf_counter()
        for batch in batches(chosen, level):
            counts += decode(batch, tokens)
        wall = time.perf_counter() - started
        run = Run(system, level, len(chosen), audio_seconds(chosen), wall, counts, [wall])
        run.load = os.getloadavg()[0]
        runs.append(run)
    return runs


# ------------------------------------------------------------------------------ the run


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from polydub.clients.triton import InferenceClient
    from polydub.export.spec import Target
    from polydub.export.whisper import MODELS, WhisperExporter

    levels = [int(x) for x in args.levels.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    clips = make_clips(max(max(levels), args.min_clips))
    work = Path(tempfile.mkdtemp(prefix="polydub-bench-asr-"))
    checkpoint = work / "checkpoint"
    build_checkpoint(checkpoint)
    load_before = _load()
    runs: list[Run] = []
    notes: dict[str, Any] = {}
    try:
        with private_stack(["triton"]) as settings:
            repository = settings.model_repository
            started = time.perf_counter()
            report = WhisperExporter().export_loaded(
                load_checkpoint(checkpoint), Target.CPU, repository
            )
            notes["export_s"] = round(time.perf_counter() - started, 1)
            notes["export_notes"] = report.notes
            async with InferenceClient(settings.triton_url) as triton:
                for model in MODELS:
                    await triton.load_model(model)
            served, batching = await served_and_local(
                settings, clips, levels, args.tokens, args.threads, args.min_clips, args.repeat
            )
            runs += served
            notes["triton_whisper_batching"] = batching
        if "faster-whisper" in systems:
            fw, convert_s = bench_faster_whisper(
                checkpoint, clips, levels, args.tokens, args.threads, args.min_clips
            )
            runs += fw
            notes["ct2_convert_s"] = round(convert_s, 1)
        if "transformers" in systems:
            runs += bench_transformers(
                checkpoint, clips, levels, args.tokens, args.threads, args.min_clips
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "args": vars(args),
        "checkpoint": {"name": CHECKPOINT, **BASE_DIMS, "vocab_size": BASE_VOCAB},
        "clip_seconds": [round(c.size / SAMPLE_RATE, 2) for c in clips],
        "load_average_before": load_before,
        "load_average_after": _load(),
        "threads": THREADS.format(n=args.threads),
        "notes": notes,
        "runs": [{**asdict(r), "throughput": round(r.throughput, 2)} for r in runs],
        "summary": summarize(runs, levels),
    }


def summarize(runs: Sequence[Run], levels: Sequence[int]) -> dict[str, Any]:
    by = {(r.system, r.concurrency): r for r in runs}
    out: dict[str, Any] = {}
    for level in levels:
        row: dict[str, Any] = {}
        served, local = by.get(("triton", level)), by.get(("onnxruntime", level))
        if served and local:
            row["serving_overhead"] = round(served.wall_s / local.wall_s - 1, 3)
        fw, hf = by.get(("faster-whisper", level)), by.get(("transformers", level))
        if served and fw:
            row["triton_vs_faster_whisper"] = round(served.throughput / fw.throughput, 2)
        if served and hf:
            row["triton_vs_transformers"] = round(served.throughput / hf.throughput, 2)
        one = by.get(("transformers", 1))
        if served and one and level > 1:  # generate() per request, no batcher in front of it
            row["triton_vs_transformers_one_by_one"] = round(served.throughput / one.throughput, 2)
        out[str(level)] = row
    return out


def print_table(result: dict[str, Any]) -> None:
    runs = result["runs"]
    print(f"\nASR throughput, {result['checkpoint']['name']} (random weights), "
          f"{result['args']['tokens']} tokens per clip, {result['args']['threads']} threads per "
          f"system; load average {result['load_average_before']} -> "
          f"{result['load_average_after']}")  # fmt: skip
    print(f"threads: {result['threads']}")
    print(f"{'system':<16}{'conc.':>6}{'clips':>6}{'audio s':>9}{'wall s':>9}"
          f"{'audio s/s':>11}{'tokens':>8}{'load':>6}  per clip / walls")  # fmt: skip
    for r in runs:
        per_clip = sorted(set(r["tokens"]))
        walls = [round(w, 2) for w in r["walls"]]
        print(f"{r['system']:<16}{r['concurrency']:>6}{r['clips']:>6}{r['audio_s']:>9.1f}"
              f"{r['wall_s']:>9.2f}{r['throughput']:>11.2f}{sum(r['tokens']):>8}"
              f"{r['load']:>6.1f}  {per_clip} {walls}")  # fmt: skip
    for level, row in result["summary"].items():
        parts = [f"{k} {v}" for k, v in row.items()]
        print(f"concurrency {level}: " + ", ".join(parts))
    print("notes:", result["notes"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=96, help="decoded tokens per clip")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per system")
    parser.add_argument(
        "--min-clips", type=int, default=2, help="clips per level at least (level 1: sequential)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="triton / in-process runs per level (median)"
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comparisons besides triton and onnxruntime"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    print_table(outcome)
    print("saved", save("asr", outcome))
