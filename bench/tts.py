"""MMS-TTS at real shape: polydub's Triton path vs the same weights in PyTorch and in onnxruntime.

One language (Spanish) at the published ``facebook/mms-tts`` dimensions (36 M parameters, random
weights from ``tests.hub.build`` with the duration predictor calibrated to speech-like lengths as
the tiny preset's is), exported by polydub's own exporter, then per round (interleaved) and per
concurrency (1 and 8 requests in flight), the same sentences through:

* ``triton``: a real Triton over the export, through polydub's ``TtsClient`` as the worker runs
  it (one sentence per request; Triton batches equal widths, two single-threaded instances);
* ``triton_grouped``: the same with ``TtsClient(batch_rows=8)``, concurrent sentences of similar
  length grouped into multi-row requests (``tts_batch``);
* ``onnxruntime``: the same ``model.onnx`` in-process, one session (2 intra-op threads) shared by
  the requests, each request one sentence;
* ``pytorch``: transformers ``VitsModel`` on the same weights (weight norm folded, as the export
  does), ``torch.set_num_threads(2)``, same noise scales, requests from a thread pool.

Figure: audio seconds produced per wall second (lengths differ a little between runtimes since
the noise differs: VitsModel draws its own), median over rounds. Not a test.

    PYTHONPATH=. .venv/bin/python -m bench.tts [--work /tmp/polydub-tts-bench] [--rounds 2]
        [--concurrency 1,8] [--sentences 16] [--peers triton,onnxruntime,pytorch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.common import TEMPLATES, save

LANGUAGE = "spa"
REPO_ID = f"facebook/mms-tts-{LANGUAGE}"
THREADS = 2
NOISE_SCALE, NOISE_SCALE_DURATION = 0.667, 0.8
SENTENCES = [
    "hola a todos",
    "no sé qué decirte",
    "buenos días, señora",
    "el tren sale a las ocho de la mañana",
    "gracias por venir tan pronto",
    "mañana vamos a la playa con los niños si hace buen tiempo",
    "¿dónde está la estación?",
    "la película empieza a las nueve y media, no llegues tarde",
    "claro que sí",
    "después de comer dimos un paseo largo por el parque del centro",
    "me encanta este lugar",
    "si quieres, te llamo esta noche y lo hablamos con calma",
    "vale, nos vemos luego",
    "el informe tiene que estar listo antes del viernes por la tarde",
    "qué frío hace hoy",
    "mi hermano vive en una ciudad pequeña cerca de la frontera con portugal",
    "tengo hambre",
    "el museo abre todos los días excepto los lunes y los festivos",
    "ya veremos",
    "cuando era pequeño pasaba los veranos en casa de mis abuelos en el campo",
]


# ----------------------------------------------------------------------------- preparing


def prepare(work: Path) -> Path:
    """Build the real-shape checkpoint, calibrate its durations, export it; the repository path.
    Each step is skipped when its output is there."""
    hub = work / "hub" / REPO_ID
    if not (hub / ".calibrated").exists():
        import transformers

        from polydub.export.mms_tts import _calibrate_durations
        from polydub.serving.tts_tokenizer import TtsTokenizer
        from tests.hub.build import build_repo

        build_repo(REPO_ID, hub, scale="real")
        model = transformers.VitsModel.from_pretrained(str(hub)).eval()
        vocab = json.loads((hub / "vocab.json").read_text())
        _calibrate_durations(model, TtsTokenizer(LANGUAGE, vocab))
        model.save_pretrained(str(hub))
        (hub / ".calibrated").write_text("1\n")
    repository = work / "repository"
    if not (repository / f"mms_tts_{LANGUAGE}" / "1" / "model.onnx").exists():
        from polydub.export.plan import ModelChoice, make_plan
        from polydub.export.run import export_all
        from polydub.export.spec import Preset, Target

        os.environ["POLYDUB_MMS_TTS_LANGUAGES"] = LANGUAGE
        choice = ModelChoice.parse(f"mms_tts_{LANGUAGE}={hub}")
        plan = make_plan(Preset.SMALL, [choice], families=["mms_tts"])
        started = time.perf_counter()
        export_all(plan, Target.CPU, repository, TEMPLATES)
        print(f"exported in {time.perf_counter() - started:.0f} s", flush=True)
    return repository


def served_precision(repository: Path) -> str:
    """What the export chose to serve (int8 vocoder or fp32: ``mms_tts_int8``'s judge)."""
    from polydub.manifest import read_manifest

    return read_manifest(repository).models[f"mms_tts_{LANGUAGE}"].precision


def spec_of(repository: Path) -> Any:
    from polydub.serving.tts_tokenizer import TtsTokenizer

    path = repository / "mms_tts_tokenizer" / "1" / "tokenizers" / f"{LANGUAGE}.json"
    return TtsTokenizer.from_json(path.read_text())


# ----------------------------------------------------------------------------- peers

# A peer runs the sentences with ``concurrency`` in flight; returns the audio seconds made.
Peer = Callable[[list[str], int], float]


def threaded(one: Callable[[int, str], float], texts: list[str], concurrency: int) -> float:
    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(one, range(len(texts)), texts))


def onnxruntime_peer(repository: Path) -> Peer:
    import onnxruntime as ort

    from polydub.orchestrator.inference.tts import request_inputs

    spec = spec_of(repository)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    path = repository / f"mms_tts_{LANGUAGE}" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def one(seed: int, text: str) -> float:
        feeds = request_inputs(spec.encode(text), 1.0, NOISE_SCALE, NOISE_SCALE_DURATION, seed)
        lengths = session.run(["waveform_lengths"], feeds)[0]
        return float(int(lengths[0, 0]) / spec.sampling_rate)

    return lambda texts, concurrency: threaded(one, texts, concurrency)


def pytorch_peer(work: Path, repository: Path) -> Peer:
    import torch
    import transformers

    from polydub.export.mms_tts_graph import fold_weight_norm

    torch.set_num_threads(THREADS)
    spec = spec_of(repository)
    model = transformers.VitsModel.from_pretrained(str(work / "hub" / REPO_ID)).eval()
    fold_weight_norm(model)
    model.noise_scale, model.noise_scale_duration = NOISE_SCALE, NOISE_SCALE_DURATION
    seeding = threading.Lock()

    def one(seed: int, text: str) -> float:
        ids = torch.tensor([spec.encode(text)], dtype=torch.int64)
        with seeding:  # the global generator: seeded per request, the draws happen inside
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return float(int(out.sequence_lengths[0]) / spec.sampling_rate)

    return lambda texts, concurrency: threaded(one, texts, concurrency)


class TritonServer:
    """A private Triton over the repository (stopped on exit, SIGTERM included)."""

    def __init__(self, work: Path, repository: Path) -> None:
        from polydub.stack import Stack
        from polydub.stack.isolated import isolated_settings

        settings = isolated_settings(work / "stack", model_repository=repository)
        self.url = settings.triton_url
        self.stack = Stack(settings, only=["triton"])

    def __enter__(self) -> TritonServer:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.stack.up()
        return self

    def __exit__(self, *_: object) -> None:
        self.stack.down()

    def cpu_seconds(self) -> float:
        """CPU time of tritonserver and its children so far (the ONNX runtime runs inside)."""
        pid = self.stack.process(self.stack.servers[0]).pid()
        if pid is None:
            return 0.0
        root = psutil.Process(pid)
        total = 0.0
        for proc in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total


class TritonPeer:
    """Requests through polydub's TtsClient; ``batch_rows`` 1 (the default): one sentence per
    request, 8: concurrent sentences of similar length grouped."""

    def __init__(self, url: str, batch_rows: int) -> None:
        self.url, self.batch_rows = url, batch_rows

    def __call__(self, texts: list[str], concurrency: int) -> float:
        return asyncio.run(self._run(texts, concurrency))

    async def _run(self, texts: list[str], concurrency: int) -> float:
        from polydub.infra.triton import InferenceClient
        from polydub.orchestrator.inference.tts import TtsClient

        async with InferenceClient(self.url, timeout=600.0) as client:
            tts = TtsClient(client, batch_rows=self.batch_rows)
            gate = asyncio.Semaphore(concurrency)

            async def one(seed: int, text: str) -> float:
                async with gate:
                    speech = await tts.synthesize(
                        text,
                        LANGUAGE,
                        noise_scale=NOISE_SCALE,
                        noise_scale_duration=NOISE_SCALE_DURATION,
                        seed=seed,
                    )
                    return speech.duration

            return sum(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))


# ----------------------------------------------------------------------------- measuring


def measure(
    peers: dict[str, Peer],
    texts: list[str],
    levels: list[int],
    rounds: int,
    server_cpu: Callable[[], float],
) -> Any:
    """Interleaved rounds: every (peer, concurrency) once per round, after one warm-up each.

    CPU seconds too (this process's and Triton's): on a machine shared with other work a peer
    with more runnable threads gets a larger share of the cores, so audio per wall second
    favours many threads; audio per CPU second does not."""
    for name, peer in peers.items():
        peer(texts[:2], 1)
        print(f"{name}: warm", flush=True)
    runs: dict[str, dict[int, list[dict[str, float]]]] = {p: {c: [] for c in levels} for p in peers}
    for index in range(rounds):
        for concurrency in levels:
            for name, peer in peers.items():
                cpu = time.process_time() + server_cpu()
                started = time.perf_counter()
                audio = peer(texts, concurrency)
                wall = time.perf_counter() - started
                cpu = time.process_time() + server_cpu() - cpu
                runs[name][concurrency].append({"audio_s": audio, "wall_s": wall, "cpu_s": cpu})
                print(
                    f"round {index + 1} c={concurrency} {name}: {audio:.1f} s audio in "
                    f"{wall:.1f} s ({audio / wall:.2f} audio s/s, {audio / cpu:.2f} per CPU s)",
                    flush=True,
                )
    return runs


def summarize(runs: Any, per: str) -> dict[str, dict[int, float]]:
    """Median audio seconds per ``per`` ("wall_s" or "cpu_s") second."""
    return {
        peer: {c: statistics.median(r["audio_s"] / r[per] for r in rs) for c, rs in by.items()}
        for peer, by in runs.items()
    }


def table(speed: dict[str, dict[int, float]], levels: list[int], unit: str) -> str:
    lines = [f"{unit:<18}" + "".join(f"   c={c} (x pytorch)" for c in levels)]
    base = speed.get("pytorch")
    for peer, by in speed.items():
        cells = []
        for c in levels:
            ratio = f"{by[c] / base[c]:.2f}x" if base else "-"
            cells.append(f"   {by[c]:5.2f} ({ratio:>6})")
        lines.append(f"{peer:<18}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/polydub-tts-bench"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--sentences", type=int, default=16)
    parser.add_argument("--peers", default="triton,triton_grouped,onnxruntime,pytorch")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = args.peers.split(",")
    repository = prepare(args.work)
    texts = SENTENCES[: args.sentences]
    peers: dict[str, Peer] = {}
    if "onnxruntime" in wanted:
        peers["onnxruntime"] = onnxruntime_peer(repository)
    if "pytorch" in wanted:
        peers["pytorch"] = pytorch_peer(args.work, repository)
    served = {"triton": 1, "triton_grouped": 8}
    server = TritonServer(args.work, repository)
    with server if set(served) & set(wanted) else contextlib.nullcontext():
        # Triton's peers first: each round starts with them.
        triton = {n: TritonPeer(server.url, rows) for n, rows in served.items() if n in wanted}
        server_cpu = server.cpu_seconds if triton else lambda: 0.0
        runs = measure({**triton, **peers}, texts, levels, args.rounds, server_cpu)
    speed, efficiency = summarize(runs, "wall_s"), summarize(runs, "cpu_s")
    print(f"served precision: {served_precision(repository)}")
    print(table(speed, levels, "audio s / wall s"))
    print(table(efficiency, levels, "audio s / CPU s"))
    tokens = [len(spec_of(repository).encode(t)) for t in texts]
    path = save(
        "tts",
        {
            "language": LANGUAGE,
            "checkpoint": f"{REPO_ID} shape, random weights (durations calibrated)",
            "precision": served_precision(repository),
            "threads": THREADS,
            "sentences": texts,
            "tokens": tokens,
            "rounds": args.rounds,
            "runs": {p: {str(c): rs for c, rs in by.items()} for p, by in runs.items()},
            "audio_s_per_s": {p: {str(c): v for c, v in by.items()} for p, by in speed.items()},
            "audio_s_per_cpu_s": {
                p: {str(c): v for c, v in by.items()} for p, by in efficiency.items()
            },
        },
    )
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
