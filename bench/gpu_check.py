"""The GPU serving path, run where a GPU is: each python model's service (NLLB, Whisper) with its
``configs/gpu.pbtxt`` parameters against the same service on the CPU, and the MMS-TTS graph
under the GPU config's providers against the CPU provider.

The check (exit 1 when it fails): the fp32 graphs give the same tokens on the GPU as on the CPU,
and MMS-TTS the same waveform within 5% RMS. The fp16 graphs the GPU export serves are compared
too and reported; tiny random models score near ties, where fp16 may choose other tokens.

Needs only numpy, onnxruntime (a build with the CUDA/TensorRT providers for a real check) and
tokenizers, so it runs on a bare GPU machine with ``PYTHONPATH=serving``:

    python -m bench.gpu_check --cpu-repo REPO_CPU --gpu-repo REPO_GPU --out results.json

The repositories are two exports of the same (tiny) checkpoints: ``polydub models export
--preset tiny --target cpu|gpu``. Prints a table and saves JSON; exits 1 when a check differs.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polydub.serving.batch import Failure, Inputs, Outputs
from polydub.serving.names import NllbIn, NllbOut, WhisperIn, WhisperOut

_PARAM = re.compile(r'key:\s*"([^"]+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"')


def config_parameters(config: Path) -> dict[str, str]:
    """The string parameters a config.pbtxt sets (what Triton would hand the python model)."""
    return dict(_PARAM.findall(config.read_text()))


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "device": ort.get_device(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        facts["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    except OSError as exc:
        facts["gpu"] = f"nvidia-smi: {exc}"
    return facts


def _timed(call: Callable[[], list[Any]]) -> tuple[list[Any], float]:
    call()  # warm-up: sessions, TensorRT engines, CUDA kernels
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def _answer(outcome: Outputs | Failure) -> Outputs:
    if isinstance(outcome, Failure):
        raise RuntimeError(outcome.message)
    return outcome


class _Service(Protocol):
    def run(self, requests: Sequence[Inputs]) -> list[Outputs | Failure]: ...


def _three_ways(
    family: str,
    make: Callable[[Path, dict[str, str]], _Service],
    cpu_repo: Path,
    gpu_repo: Path,
) -> dict[str, _Service]:
    """The family's service as the CPU runs it, and its GPU profile on the fp32 and on the
    fp16 graphs."""
    from polydub.serving import nllb_service, whisper_service

    defaults = {"nllb": nllb_service.PARAMETERS, "whisper": whisper_service.PARAMETERS}[family]
    gpu = config_parameters(Path("model_repository") / family / "configs" / "gpu.pbtxt")
    fp32 = {"encoder_file": "encoder_fp32.onnx", "decoder_file": "decoder_fp32.onnx"}
    version = Path(family) / "1"
    return {
        "cpu_fp32": make(cpu_repo / version, {**defaults, **fp32, "intra_op_threads": "4"}),
        "gpu_fp32": make(cpu_repo / version, {**defaults, **gpu, **fp32}),
        "gpu_fp16": make(gpu_repo / version, {**defaults, **gpu}),
    }


def _compare(
    services: dict[str, _Service], request: Inputs, output: str, unit: str
) -> dict[str, Any]:
    """Each service on ``request``: rows of ``output`` equal to the CPU's, per GPU variant. The
    check is fp32; fp16 may choose other tokens where a random model's scores are near ties,
    so it is reported only."""
    answers, seconds = {}, {}
    for name, service in services.items():
        outcome, seconds[name] = _timed(partial(service.run, [request]))
        answers[name] = list(_answer(outcome[0])[output])

    def agree(name: str) -> int:
        pairs = zip(answers["cpu_fp32"], answers[name], strict=True)
        return sum(bool(np.array_equal(a, b)) for a, b in pairs)

    rows = len(answers["cpu_fp32"])
    return {
        "agree": f"fp32 {agree('gpu_fp32')}/{rows}, fp16 {agree('gpu_fp16')}/{rows} {unit}",
        "ok": agree("gpu_fp32") == rows,
        "cpu_s": seconds["cpu_fp32"],
        "gpu_s": seconds["gpu_fp16"],
    }


def check_nllb(cpu_repo: Path, gpu_repo: Path) -> dict[str, Any]:
    from polydub.serving.nllb_service import NllbService

    services = _three_ways("nllb", NllbService, cpu_repo, gpu_repo)
    texts = [b"Hello world, this is a test.", b"The train leaves at noon.", b"Good morning."]
    request: Inputs = {
        NllbIn.TEXT: np.array([[t] for t in texts], dtype=np.object_),
        NllbIn.SRC_LANG: np.array([[b"eng_Latn"]] * len(texts), dtype=np.object_),
        NllbIn.TGT_LANG: np.array([[b"spa_Latn"]] * len(texts), dtype=np.object_),
        NllbIn.MAX_LENGTH: np.array([[24]] * len(texts), dtype=np.int32),
    }
    fp16 = services["gpu_fp16"]
    assert isinstance(fp16, NllbService)
    return {
        "model": "nllb",
        "providers": fp16.graphs.providers,
        **_compare(services, request, NllbOut.TRANSLATIONS, "translations"),
    }


def check_whisper(cpu_repo: Path, gpu_repo: Path) -> dict[str, Any]:
    from polydub.serving.whisper_service import WhisperService

    services = _three_ways("whisper", WhisperService, cpu_repo, gpu_repo)
    audio = np.random.default_rng(0).normal(0, 0.1, (4, 16000 * 3)).astype(np.float32)
    request: Inputs = {
        WhisperIn.AUDIO: audio,
        WhisperIn.LANGUAGE: np.array([[b"en"]] * 4, dtype=np.object_),
        WhisperIn.MAX_NEW_TOKENS: np.array([[16]] * 4, dtype=np.int32),
    }
    fp16 = services["gpu_fp16"]
    assert isinstance(fp16, WhisperService)
    return {
        "model": "whisper",
        "providers": {"device": fp16.backend.device},
        **_compare(services, request, WhisperOut.TOKENS, "token rows"),
    }


def check_mms_tts(cpu_repo: Path, gpu_repo: Path, voice: str = "mms_tts_eng") -> dict[str, Any]:
    import onnxruntime as ort

    from polydub.serving.ort import providers, session_options

    config = Path("model_repository") / voice / "configs" / "gpu.pbtxt"
    accelerators = re.findall(r'name\s*:\s*"(tensorrt|cuda)"', config.read_text()) or ["cuda"]
    graph = next((gpu_repo / voice / "1").glob("*.onnx"))
    cpu = ort.InferenceSession(
        str(next((cpu_repo / voice / "1").glob("*.onnx"))), session_options(1)
    )
    gpu = ort.InferenceSession(
        str(graph), session_options(1), providers=providers([*accelerators, "cuda"], 0, "/tmp/trt")
    )
    names = {i.name for i in gpu.get_inputs()}
    feeds: dict[str, np.ndarray[Any, Any]] = {
        "input_ids": np.array([[0, 5, 0, 7, 0, 9, 0, 11, 0]], dtype=np.int64),
        "attention_mask": np.ones((1, 9), dtype=np.int64),
    }
    for name, value in (("noise_scale", 0.0), ("noise_scale_duration", 0.0), ("length_scale", 1.0)):
        if name in names:
            feeds[name] = np.array([[value]], dtype=np.float32)
    if "seed" in names:
        feeds["seed"] = np.array([[1]], dtype=np.int64)
    feeds = {k: v for k, v in feeds.items() if k in names}
    want, cpu_s = _timed(lambda: cpu.run(None, feeds))
    got, gpu_s = _timed(lambda: gpu.run(None, feeds))
    wave_a, wave_b = np.asarray(want[0]).ravel(), np.asarray(got[0]).ravel()
    n = min(wave_a.size, wave_b.size)
    error = float(np.sqrt(np.mean((wave_a[:n] - wave_b[:n]) ** 2)) / (np.std(wave_a[:n]) + 1e-9))
    return {
        "model": voice,
        "providers": gpu.get_providers(),
        "agree": f"samples {wave_a.size} vs {wave_b.size}, relative RMS error {error:.3g}",
        "ok": wave_a.size == wave_b.size and error < 0.05,
        "cpu_s": cpu_s,
        "gpu_s": gpu_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-repo", type=Path, required=True)
    parser.add_argument("--gpu-repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    args = parser.parse_args()
    env = environment()
    print(json.dumps(env, indent=1))
    if "CUDAExecutionProvider" not in env["providers"]:
        print("this onnxruntime build has no CUDA provider: nothing runs on the GPU")
    rows: list[dict[str, Any]] = []
    for check in (check_nllb, check_whisper, check_mms_tts):
        try:
            rows.append(check(args.cpu_repo, args.gpu_repo))
        except Exception as exc:  # one family's failure must not hide the others' results
            rows.append({"model": check.__name__, "ok": False, "error": repr(exc)[:500]})
    print(f"{'model':<14}{'ok':<6}{'cpu s':>8}{'gpu s':>8}  agreement / providers")
    for row in rows:
        cpu_s, gpu_s = row.get("cpu_s", float("nan")), row.get("gpu_s", float("nan"))
        detail = row.get("agree", row.get("error", ""))
        print(f"{row['model']:<14}{row['ok']!s:<6}{cpu_s:>8.3f}{gpu_s:>8.3f}  {detail}")
        if "providers" in row:
            print(f"{'':<14}providers: {row['providers']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "checks": rows}, indent=1))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
