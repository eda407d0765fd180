"""The serving half of ``bench.real_size``: one real Triton over the exported repository, each
model loaded alone and measured, then one inference per family through polydub's own clients.

Memory is that of the tritonserver process tree (the python-backend stubs, which run our
onnxruntime backend and the BLS models, are its children): RSS, and PSS, which splits the pages
the stubs share (libpython, onnxruntime) instead of counting them once per stub. The python
backend's /dev/shm regions are reported apart (tmpfs pages, counted by the blocks in use).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from polydub.export.hub import available_memory
from polydub.serving.names import SAMPLE_RATE
from polydub.stack import Stack
from polydub.stack.isolated import isolated_settings
from polydub.stack.triton import shm_region_prefix

GIB = 2**30
LOAD_TIMEOUT_S = 900.0
INFER_TIMEOUT_S = 300.0
# Free memory a model's load needs: onnxruntime holds the weights (served bytes) and a graph
# being optimised takes about as much again for a moment.
LOAD_FACTOR = 2.5
LOAD_SLACK = 512 * 2**20
WORK_TOKENS = 32
WORK_SENTENCE = "The committee will meet again next week to review the budget and the plans"
TTS_TEXTS = {"spa": "hola a todos", "fra": "bonjour a tous", "deu": "hallo zusammen"}


def process_tree(pid: int) -> list[psutil.Process]:
    """tritonserver and its descendants (the python-backend stubs)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_memory(pid: int, shm_prefix: str) -> dict[str, int]:
    """RSS and PSS summed over ``pid`` and its descendants, and the python backend's shm."""
    rss = pss = processes = 0
    for proc in process_tree(pid):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += info.pss
        processes += 1
    shm = sum(p.stat().st_blocks * 512 for p in Path("/dev/shm").glob(shm_prefix + "*"))
    return {"rss_bytes": rss, "pss_bytes": pss, "shm_bytes": shm, "processes": processes}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        "rss_delta_bytes": after["rss_bytes"] - before["rss_bytes"],
        "pss_delta_bytes": after["pss_bytes"] - before["pss_bytes"],
        "shm_delta_bytes": after["shm_bytes"] - before["shm_bytes"],
    }


def load_order(repository: Path, models: list[str]) -> list[str]:
    """ONNX graphs before the python (BLS) models that call them; folders without a config
    (nothing for Triton to load) left out."""
    configured = [m for m in models if (repository / m / "config.pbtxt").is_file()]
    python = [m for m in configured if any((repository / m).glob("*/model.py"))]
    return [m for m in configured if m not in python] + python


def _audio(seconds: float) -> Any:
    """A voiced-sounding signal (harmonics of a gliding pitch, a little noise)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    noise = np.random.default_rng(0).normal(0, 0.01, t.size)
    return (0.2 * voiced + noise).astype(np.float32)


def inference(
    family: str, client: Any, models: list[str], requests: int = 1
) -> Callable[[], Awaitable[str]]:
    """One request per served model of the family, through the client the worker uses. With
    ``requests`` > 1, Whisper and NLLB get that many at once, as a working load: full 30 s
    windows decoding 32 tokens each, or sentences of about 20 tokens translated to 60."""

    async def whisper() -> str:
        from polydub.orchestrator.inference.asr import AsrClient

        if requests == 1:
            asr = AsrClient(client, max_new_tokens=16)
            result = await asr.transcribe(_audio(8.0), language="eng")
            return f"{len(result.segments)} segments"
        asr = AsrClient(client, max_new_tokens=WORK_TOKENS, min_new_tokens=WORK_TOKENS)
        windows = await asyncio.gather(
            *(asr.transcribe_window(_audio(30.0), "en") for _ in range(requests))
        )
        return f"{len(windows)} windows, {sum(len(w.tokens) for w in windows)} tokens"

    async def nllb() -> str:
        from polydub.orchestrator.inference.translation import TranslationClient

        if requests == 1:
            done = await TranslationClient(client).translate(
                "Hello, how are you today?", "eng", "fra", max_length=16
            )
            return f"{len(done.candidates[0].text)} characters"
        many = await TranslationClient(client).translate_many(
            [f"{WORK_SENTENCE} ({i})" for i in range(requests)], "eng", "fra", max_length=60
        )
        return f"{len(many)} sentences, {sum(len(t.candidates[0].text) for t in many)} characters"

    async def mms_tts() -> str:
        from polydub.orchestrator.inference.tts import TtsClient

        tts = TtsClient(client)
        voices = [m.removeprefix("mms_tts_") for m in models if m != "mms_tts_tokenizer"]
        lengths = []
        for code in voices:
            speech = await tts.synthesize(TTS_TEXTS.get(code, "hello everybody"), code)
            lengths.append(f"{code} {speech.samples.size / speech.sample_rate:.1f}s")
        return ", ".join(lengths)

    async def diarization() -> str:
        from polydub.orchestrator.inference.diarization import DiarizationClient

        diarize = DiarizationClient(client)
        audio = _audio(12.0)
        segmentation = await diarize.segment(audio)
        embeddings = await diarize.embed([audio[: 3 * SAMPLE_RATE]])
        return f"{len(segmentation.starts)} windows, embedding {embeddings.shape}"

    runs = {"whisper": whisper, "nllb": nllb, "mms_tts": mms_tts, "diarization": diarization}
    return runs[family]


async def _infer(url: str, family: str, models: list[str], requests: int) -> str:
    from polydub.infra.triton import InferenceClient

    async with InferenceClient(url, timeout=INFER_TIMEOUT_S) as client:
        run = inference(family, client, models, requests)
        return await asyncio.wait_for(run(), INFER_TIMEOUT_S)


class PeakRss:
    """The process tree's largest RSS sum while the block runs, and each process's largest
    (an instance's own peak: the instances' peaks need not coincide), sampled every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.by_process: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            total = 0
            for proc in process_tree(self.pid):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss = proc.memory_info().rss
                    total += rss
                    self.by_process[proc.pid] = max(rss, self.by_process.get(proc.pid, 0))
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def _load(http: httpx.Client, name: str) -> tuple[float, str | None]:
    started = time.perf_counter()
    answer = http.post(f"/v2/repository/models/{name}/load")
    seconds = time.perf_counter() - started
    if answer.status_code == 200:
        return seconds, None
    return seconds, answer.text[-500:]


def measure_serving(
    work: Path, exported: dict[str, list[str]], requests: int = 1
) -> dict[str, Any]:
    """Start Triton on the repository, load and use each family's models, measuring memory."""
    repository = work / "repository"
    settings = isolated_settings(work / "stack", model_repository=repository)
    stack = Stack(settings, only=["triton"])
    # A SIGTERM (timeout, kill) must still stop tritonserver: it runs in a session of its own.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prefix = shm_region_prefix(settings.triton_http_port)
    result: dict[str, Any] = {"models": {}, "inference": {}}
    stack.up()
    try:
        pid = stack.process(stack.servers[0]).pid()
        assert pid is not None, "tritonserver exited"
        time.sleep(2.0)
        baseline = tree_memory(pid, prefix)
        result["baseline_pss_bytes"] = baseline["pss_bytes"]
        result["baseline_rss_bytes"] = baseline["rss_bytes"]
        with httpx.Client(base_url=settings.triton_http_url, timeout=LOAD_TIMEOUT_S) as http:
            for family, models in exported.items():
                order = load_order(repository, models)
                for name in order:
                    result["models"][name] = _measure_load(http, repository, name, pid, prefix)
                    print(f"  triton {name}: {_describe(result['models'][name])}", flush=True)
                before = tree_memory(pid, prefix)
                entry: dict[str, Any] = {}
                started = time.perf_counter()
                with PeakRss(pid) as peak:
                    try:
                        entry["answer"] = asyncio.run(
                            _infer(settings.triton_url, family, order, requests)
                        )
                    except Exception as exc:  # recorded: the other families still get measured
                        entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
                entry["seconds"] = time.perf_counter() - started
                entry["tree_rss_before_bytes"] = before["rss_bytes"]
                entry["tree_peak_rss_bytes"] = peak.peak
                entry["process_peak_rss_bytes"] = sorted(peak.by_process.values(), reverse=True)
                entry.update(delta(before, tree_memory(pid, prefix)))
                result["inference"][family] = entry
                print(f"  triton {family} inference: {entry}", flush=True)
        final = tree_memory(pid, prefix)
        result["total_pss_bytes"] = final["pss_bytes"]
        result["total_rss_bytes"] = final["rss_bytes"]
        result["total_shm_bytes"] = final["shm_bytes"]
        result["processes"] = final["processes"]
    finally:
        stack.down()
    return result


def _measure_load(
    http: httpx.Client, repository: Path, name: str, pid: int, prefix: str
) -> dict[str, Any]:
    need = sum(p.stat().st_size for p in (repository / name).rglob("model.onnx*"))
    need = int(need * LOAD_FACTOR) + LOAD_SLACK
    if available_memory() < need:
        return {
            "error": f"refused: {available_memory() / GIB:.1f} GiB available, loading {name} "
            f"needs about {need / GIB:.1f} GiB"
        }
    before = tree_memory(pid, prefix)
    seconds, error = _load(http, name)
    if error:
        return {"load_s": seconds, "error": error}
    time.sleep(1.0)  # the stub's last allocations after it reported ready
    after = tree_memory(pid, prefix)
    return {"load_s": seconds, **delta(before, after), "tree_pss_bytes": after["pss_bytes"]}


def _describe(load: dict[str, Any]) -> str:
    if "error" in load:
        return f"FAILED {load['error'][:200]}"
    return (
        f"{load['load_s']:.1f}s, +{load['pss_delta_bytes'] / 2**20:.0f} MiB PSS, "
        f"+{load['rss_delta_bytes'] / 2**20:.0f} MiB RSS"
    )
