"""Peak resident memory of a process tree while a benchmark runs, sampled in a thread.

``PeakMemory(pid)`` samples RSS and PSS of ``pid`` and its descendants (for Triton: the python
backend stubs, where the models' onnxruntime sessions live) every ``interval`` seconds between
``start()`` and ``stop()``, and keeps the largest. Sampling misses spikes shorter than the
interval; the stubs' own high-water marks (VmHWM, never missed) are read at ``stop()`` too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 2**20


@dataclass(frozen=True)
class MemoryPeak:
    rss_mib: int  # the largest RSS sum of the tree seen by a sample
    pss_mib: int  # PSS at that sample (shared pages split between the processes)
    hwm_mib: int  # sum of each process's own VmHWM (their peaks, not necessarily simultaneous)
    start_rss_mib: int  # the tree's RSS when sampling began
    processes: int


def tritonserver_pid(model_repository: Path) -> int:
    """The tritonserver serving ``model_repository`` (found by its command line)."""
    flag = f"--model-repository={model_repository}"
    for proc in psutil.process_iter(["name", "cmdline"]):
        if flag in (proc.info["cmdline"] or []):
            return int(proc.pid)
    raise LookupError(f"no tritonserver serves {model_repository}")


def _tree(pid: int, children: bool = True) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)] if children else [root]


def _hwm_bytes(proc: psutil.Process) -> int:
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sample(pid: int, children: bool = True, pss: bool = True) -> tuple[int, int, int]:
    """(RSS, PSS, processes) of the tree now (of ``pid`` alone without ``children``). PSS walks
    every page of every process (tens of ms for a model server's stubs); without ``pss`` it is
    0 and a sample reads only the RSS counters."""
    rss = shared = count = 0
    try:
        tree = _tree(pid, children)
    except psutil.NoSuchProcess:  # the server has gone (the run is ending)
        return 0, 0, 0
    for proc in tree:
        try:
            info = proc.memory_full_info() if pss else proc.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, count = rss + info.rss, count + 1
        shared += info.pss if pss else 0
    return rss, shared, count


class PeakMemory:
    """``children``: the process tree (else ``pid`` alone); ``pss``: sample PSS too (see
    ``sample``: costly beside a busy benchmark)."""

    def __init__(
        self, pid: int, interval: float = 0.25, *, children: bool = True, pss: bool = True
    ) -> None:
        self.pid = pid
        self.interval = interval
        self.children = children
        self.pss = pss
        self._peak = (0, 0, 0)
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._peak = sample(self.pid, self.children, self.pss)
        self._start = self._peak[0]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = sample(self.pid, self.children, self.pss)
            if now[0] > self._peak[0]:
                self._peak = now

    def stop(self) -> MemoryPeak:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            hwm = sum(_hwm_bytes(p) for p in _tree(self.pid, self.children))
        except psutil.NoSuchProcess:
            hwm = 0
        rss, pss, count = self._peak
        return MemoryPeak(rss // MIB, pss // MIB, hwm // MIB, self._start // MIB, count)
