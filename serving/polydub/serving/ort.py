"""onnxruntime session options and execution providers, as the in-process graphs of the Triton
python models (``nllb_ort.OrtNllb``, ``whisper_ort.OrtGraphs``) open their sessions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# onnxruntime execution providers by the short names the models' configs use
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container's cpuset limits)."""
    return len(os.sched_getaffinity(0))


def session_options(threads: int = 0, *, arena: bool = True) -> Any:
    """Quiet session options with ``threads`` intra-op threads (0: one per CPU this process may
    run on). Set explicitly: onnxruntime's default pins its threads to cores, and a pinned
    thread cannot leave a core another process keeps busy. ``arena``: onnxruntime's CPU memory
    arena (keeps the blocks it allocated)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or available_cpus()
    options.enable_cpu_mem_arena = arena
    return options


def providers(names: Sequence[str], device_id: int, trt_cache_dir: str | None) -> list[Any]:
    """onnxruntime providers by short name, in order; those this build lacks are skipped and
    the CPU provider is always last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    for name in names:
        provider = PROVIDERS.get(name.strip().lower())
        if provider is None:
            raise ValueError(f"unknown provider {name!r}; expected one of {sorted(PROVIDERS)}")
        if provider not in available or provider == "CPUExecutionProvider":
            continue
        settings: dict[str, Any] = {"device_id": device_id}
        if provider == "TensorrtExecutionProvider":
            settings.update(trt_fp16_enable=True, trt_engine_cache_enable=True)
            if trt_cache_dir:
                settings["trt_engine_cache_path"] = trt_cache_dir
        chosen.append((provider, settings))
    return [*chosen, "CPUExecutionProvider"]
