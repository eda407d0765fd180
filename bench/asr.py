"""ASR throughput with whisper-base dimensions: Triton vs faster-whisper vs transformers.

One run, the same audio, the same checkpoint and the same number of decoded tokens for every
system; throughput is audio seconds per wall second at 1, 4 and 16 concurrent requests:

* ``triton``: the ``whisper`` BLS model served by a private Triton, through ``AsrClient``
  (one request per clip, ``concurrency`` requests in flight; Triton's dynamic batcher groups them);
* ``onnxruntime``: the same exported graphs and the same decoding loop (``whisper_decode``) run in
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
Concurrency 1 decodes 2 clips one after the other (``--min-clips``), 4 and 16 that many clips.

The machine may be shared: every system runs once per level per round, rounds repeat
(``--repeat``, default 3): the headline figure is the best round (other processes only add time),
the median is printed beside it; the load average is recorded with every round.

    .venv/bin/python -m bench.asr [--tokens 96] [--levels 1,4,16] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import TEMPLATES, private_stack, save
from polydub.serving.names import SAMPLE_RATE

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
    "triton: the whisper BLS's onnxruntime sessions, intra_op_threads 0 (one per CPU: {n} here)"
    "; onnxruntime in-process: intra_op_num_threads={n}; faster-whisper: cpu_threads={n} "
    "(intra_threads), num_workers=1; transformers: torch.set_num_threads({n})"
)


@dataclass
class Run:
    system: str
    concurrency: int
    clips: int
    audio_s: float
    wall_s: float  # the best (least disturbed) of ``walls``
    tokens: list[int] = field(default_factory=list)  # decoded per clip
    walls: list[float] = field(default_factory=list)  # every round
    cpus: list[float] = field(default_factory=list)  # CPU seconds of every round (all processes)
    loads: list[float] = field(default_factory=list)  # 1-minute load average after each

    @property
    def throughput(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def median_throughput(self) -> float:
        return self.audio_s / float(np.median(self.walls))


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

# A system decodes ``clips`` with ``level`` of them in flight (or batched) and returns the
# number of tokens decoded per clip.
Decode = Callable[[Sequence[Audio], int], Awaitable[list[int]]]


def batched(decode: Callable[[Sequence[Audio]], list[int]]) -> Decode:
    """Batch systems: ``level`` clips per batch, batches one after the other."""

    async def run(clips: Sequence[Audio], level: int) -> list[int]:
        return [n for batch in batches(clips, level) for n in decode(batch)]

    return run


def triton_system(client: Any) -> Decode:
    """One ``AsrClient.transcribe`` per clip, ``level`` requests in flight."""

    async def run(clips: Sequence[Audio], level: int) -> list[int]:
        gate = asyncio.Semaphore(level)

        async def one(clip: Audio) -> int:
            async with gate:
                return len((await client.transcribe(clip, language="eng")).tokens)

        return list(await asyncio.gather(*(one(c) for c in clips)))

    return run


def onnxruntime_system(repository: Path, tokens: int, threads: int) -> Decode:
    """The served graphs, sessions and loop (``OrtWhisper`` = the BLS's ``OrtGraphs``), here."""
    from polydub.export.whisper_reference import OrtWhisper
    from polydub.serving.whisper_decode import DecodeOptions, greedy_decode
    from polydub.serving.whisper_features import log_mel_spectrogram

    local = OrtWhisper.from_repository(repository, threads=threads)
    options = DecodeOptions("en", "transcribe")

    def decode(batch: Sequence[Audio]) -> list[int]:
        features = log_mel_spectrogram(batch, local.facts.n_mels)
        results = greedy_decode(
            local, features, [options] * len(batch), local.facts, tokens, min_new_tokens=tokens
        )
        return [len(r.tokens) for r in results]

    return batched(decode)


def faster_whisper_system(converted: Path, checkpoint: Path, tokens: int, threads: int) -> Decode:
    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor

    model = WhisperModel(str(converted), device="cpu", compute_type="int8", cpu_threads=threads)
    extractor = FeatureExtractor(feature_size=BASE_DIMS["num_mel_bins"])
    ids = token_ids(checkpoint)
    prompt = [ids["sot"], ids["en"], ids["transcribe"]]  # timestamps on: no <|notimestamps|>
    window = 30 * SAMPLE_RATE

    def decode(batch: Sequence[Audio]) -> list[int]:
        features = np.stack(
            [extractor(np.pad(a, (0, window - a.size)))[:, : window // 160] for a in batch]
        )
        results = model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
            [prompt] * len(batch),
            beam_size=1,
            # CTranslate2 decodes at most max_length / 2 new tokens for Whisper (whisper.cc)
            max_length=2 * tokens,
            suppress_tokens=[-1, ids["eot"]],
            return_no_speech_prob=True,
        )
        return [len(r.sequences_ids[0]) for r in results]

    return batched(decode)


def convert_ct2(checkpoint: Path, out: Path) -> None:
    import ctranslate2

    converter = ctranslate2.converters.TransformersConverter(
        str(checkpoint), copy_files=["tokenizer.json"]
    )
    converter.convert(str(out), quantization="int8", force=True)


def transformers_system(checkpoint: Path, tokens: int, threads: int) -> Decode:
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

    def decode(batch: Sequence[Audio]) -> list[int]:
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
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                num_beams=1,
            )
        generated = sequences[:, prompt.shape[1] :].tolist()
        return [len([t for t in row if t != ids["eot"]]) for row in generated]

    return batched(decode)


def cpu_seconds(marker: str) -> float:
    """CPU time (user + system) used so far by this process and by every process whose command
    line contains ``marker`` (the private stack's directory: tritonserver, its python stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def measure(
    systems: dict[str, Decode],
    clips: Sequence[Audio],
    levels: Sequence[int],
    min_clips: int,
    repeat: int,
    marker: str,
    pause_s: float = 1.0,
) -> list[Run]:
    """Rounds of every (level, system) in turn, ``repeat`` rounds: on a shared machine the load
    swings, and interleaving spreads it over all systems. Other processes only ever add time, so
    the headline figure is each run's best round; the median is kept too.
    ``pause_s`` between runs lets the previous system's spinning threads go idle."""
    runs: dict[tuple[str, int], Run] = {}
    for decode in systems.values():  # warm-up: one full decode each
        await decode(clips[:1], 1)
    for _ in range(repeat):
        for level in levels:
            chosen = clips_at(clips, level, min_clips)
            for name, decode in systems.items():
                await asyncio.sleep(pause_s)
                cpu = cpu_seconds(marker)
                started = time.perf_counter()
                counts = await decode(chosen, level)
                wall = time.perf_counter() - started
                cpu = cpu_seconds(marker) - cpu
                key = (name, level)
                if key not in runs:
                    runs[key] = Run(name, level, len(chosen), audio_seconds(chosen), 0.0, counts)
                run = runs[key]
                if run.tokens != counts:
                    raise AssertionError(f"{name}: token counts changed between rounds")
                run.walls.append(wall)
                run.cpus.append(round(cpu, 2))
                run.wall_s = min(run.walls)
                run.loads.append(round(os.getloadavg()[0], 2))
                print(f"  {name} x{level}: {wall:.2f}s (load {run.loads[-1]:.1f})", flush=True)
    return [runs[(name, level)] for name in systems for level in levels]


# ------------------------------------------------------------------------------ the run


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from polydub.export.repository import copy_templates
    from polydub.export.spec import Target
    from polydub.export.whisper import MODELS, WhisperExporter
    from polydub.export.whisper_graphs import BLS_MODEL
    from polydub.infra.triton import InferenceClient
    from polydub.orchestrator.inference.asr import AsrClient

    levels = [int(x) for x in args.levels.split(",")]
    others = [s for s in args.systems.split(",") if s]
    unknown = set(others) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    clips = make_clips(max(max(levels), args.min_clips))
    work = Path(tempfile.mkdtemp(prefix="polydub-bench-asr-"))
    checkpoint = work / "checkpoint"
    build_checkpoint(checkpoint)
    notes: dict[str, Any] = {}
    try:
        with private_stack(["triton"]) as settings:
            repository = settings.model_repository
            started = time.perf_counter()
            report = WhisperExporter().export_loaded(
                load_checkpoint(checkpoint), Target.CPU, repository
            )
            copy_templates(TEMPLATES, repository, report.models)
            notes["export_s"] = round(time.perf_counter() - started, 1)
            notes["export_notes"] = report.notes
            async with InferenceClient(settings.triton_url) as triton:
                for model in MODELS:
                    await triton.load_model(model)
                client = AsrClient(triton, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
                systems = {
                    "triton": triton_system(client),
                    "onnxruntime": onnxruntime_system(repository, args.tokens, args.threads),
                }
                if "faster-whisper" in others:
                    started = time.perf_counter()
                    convert_ct2(checkpoint, work / "ct2-int8")
                    notes["ct2_convert_s"] = round(time.perf_counter() - started, 1)
                    systems["faster-whisper"] = faster_whisper_system(
                        work / "ct2-int8", checkpoint, args.tokens, args.threads
                    )
                if "transformers" in others:
                    systems["transformers"] = transformers_system(
                        checkpoint, args.tokens, args.threads
                    )
                load_before = _load()
                before = await triton.statistics(BLS_MODEL)
                runs = await measure(
                    systems, clips, levels, args.min_clips, args.repeat, str(settings.stack_dir)
                )
                after = await triton.statistics(BLS_MODEL)
                notes["triton_whisper_batching"] = {
                    key: int(after.get(key, 0)) - int(before.get(key, 0))
                    for key in ("inference_count", "execution_count")
                }
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
        "runs": [
            {
                **asdict(r),
                "throughput": round(r.throughput, 2),
                "median_throughput": round(r.median_throughput, 2),
            }
            for r in runs
        ],
        "summary": summarize(runs, levels),
    }


def summarize(runs: Sequence[Run], levels: Sequence[int]) -> dict[str, Any]:
    """Ratios of best rounds; the serving overhead also per round (Triton and in-process ran
    back to back) and in CPU seconds (Triton's processes and the client vs this process)."""
    by = {(r.system, r.concurrency): r for r in runs}
    out: dict[str, Any] = {}
    for level in levels:
        row: dict[str, Any] = {}
        served, local = by.get(("triton", level)), by.get(("onnxruntime", level))
        if served and local:
            row["serving_overhead"] = round(served.wall_s / local.wall_s - 1, 3)
            pairs = [t / o - 1 for t, o in zip(served.walls, local.walls, strict=True)]
            row["serving_overhead_per_round"] = [round(x, 3) for x in pairs]
            # CPU time is far less sensitive to other processes than wall time
            cpu = [t / o - 1 for t, o in zip(served.cpus, local.cpus, strict=True)]
            row["serving_cpu_overhead_median"] = round(float(np.median(cpu)), 3)
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
    print("audio s/s: best round (median of rounds); walls, load average, CPU s of every round")
    print(f"{'system':<16}{'conc.':>6}{'clips':>6}{'audio s':>9}{'best s':>8}"
          f"{'audio s/s':>18}{'tokens':>8}  per clip, walls, loads")  # fmt: skip
    for r in runs:
        per_clip = sorted(set(r["tokens"]))
        walls = [round(w, 2) for w in r["walls"]]
        speed = f"{r['throughput']:.2f} ({r['median_throughput']:.2f})"
        print(f"{r['system']:<16}{r['concurrency']:>6}{r['clips']:>6}{r['audio_s']:>9.1f}"
              f"{r['wall_s']:>8.2f}{speed:>18}{sum(r['tokens']):>8}  "
              f"{per_clip} {walls} {r['loads']} cpu {r['cpus']}")  # fmt: skip
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
        "--repeat", type=int, default=3, help="rounds over every system and level (median)"
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
