"""End-to-end dubbing throughput: one job alone, then 8 at once, on a 60 s two-speaker clip.

Reports wall time / media duration and the share of wall time with no model inference in flight
(platform overhead: media work, storage, database, queueing). Inference time is metered on the
worker's Triton client as the union of the intervals with at least one request in flight.
Per job it also reports each stage's wall time (job_stages started/finished, mean over jobs and
languages), the ffmpeg/ffprobe processes started and their CPU seconds (the worker runs in this
process, so its finished children are exactly those media tools): CPU seconds stay comparable
on a loaded machine where wall seconds do not. Memory: the peak RSS of the Triton
process tree (the sum of its processes' RSS: pages they share are counted in each) and of this
process (the worker) while each part runs, sampled once a second: the whole stack's resident
memory under load (issue 17 item 7).

    .venv/bin/python -m bench.pipeline [--concurrent 8] [--seconds 60] [--targets spa,fra]
        [--preset tiny | --repository DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import asyncpg

from bench.common import TEMPLATES, private_stack, save
from bench.memory_watch import PeakMemory, tritonserver_pid
from polydub.export.run import export_preset
from polydub.export.spec import Preset, Target
from polydub.infra.db import migrate_database
from polydub.infra.queue import connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.jobs import JobKeys, JobMessage
from polydub.media import runner
from polydub.orchestrator.main import run_worker
from polydub.orchestrator.services import Services
from polydub.orchestrator.worker import WorkerOptions
from polydub.samples import DEFAULT_TURNS, make_two_speaker_clip
from polydub.stack.models import load_groups

P = ParamSpec("P")
R = TypeVar("R")


class InferenceMeter:
    """Wall time with >= 1 Triton request in flight, and per-call totals."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.busy_since = 0.0
        self.busy = 0.0
        self.calls = 0

    def wrap(self, infer: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        async def metered(*args: P.args, **kwargs: P.kwargs) -> R:
            if self.in_flight == 0:
                self.busy_since = time.perf_counter()
            self.in_flight += 1
            self.calls += 1
            try:
                return await infer(*args, **kwargs)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self.busy += time.perf_counter() - self.busy_since

        return metered

    def snapshot(self) -> tuple[float, int]:
        return self.busy, self.calls


class MediaMeter:
    """ffmpeg / ffprobe processes started through polydub.media.runner, by binary name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        run = runner._run

        def counted(command: list[str], **kwargs: Any) -> runner.Completed:
            name = os.path.basename(command[0])
            with self.lock:
                self.counts[name] = self.counts.get(name, 0) + 1
            return run(command, **kwargs)

        runner._run = counted

    def snapshot(self) -> tuple[dict[str, int], float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with self.lock:
            return dict(self.counts), children.ru_utime + children.ru_stime


async def load_models(settings: Any, preset: Preset | None) -> list[str]:
    """Export ``preset`` into the stack's repository (None: serve the repository it has)."""
    if preset is not None:
        await asyncio.to_thread(
            export_preset, preset, Target.CPU, settings.model_repository, templates=TEMPLATES
        )
    groups = load_groups(settings.model_repository)  # graphs, then the BLS models
    async with InferenceClient(settings.triton_url) as triton:
        return await triton.load_models(groups)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    servers = ["postgres", "nats", "s3", "triton"]
    with private_stack(servers, args.repository) as settings:
        await migrate_database(settings)
        models = await load_models(settings, None if args.repository else Preset(args.preset))
        clip = make_two_speaker_clip(
            Path(settings.stack_dir) / "bench.mp4",
            seconds=args.seconds,
            turns=DEFAULT_TURNS * 8,
            gap=1.0,
        )
        store = ObjectStore(settings)
        pool = await asyncpg.connect(settings.postgres_dsn)
        owner = uuid.uuid4()
        await pool.execute(
            "INSERT INTO api_keys (id, name, prefix, key_hash) VALUES ($1, 'bench', $2, $3)",
            owner,
            owner.hex[:12],
            b"x" * 32,
        )
        meter = InferenceMeter()
        media = MediaMeter()

        def meter_services(services: Services) -> None:
            services.triton.infer = meter.wrap(services.triton.infer)  # type: ignore[method-assign]

        worker = asyncio.create_task(
            run_worker(
                settings,
                WorkerOptions(concurrency=args.concurrent),
                handle_signals=False,
                on_services=meter_services,
            )
        )
        nc = await connect(settings)
        await ensure_jobs_stream(nc.jetstream(), settings)
        targets = args.targets.split(",")

        async def batch(n: int) -> dict[str, Any]:
            ids = []
            for _ in range(n):
                job_id = uuid.uuid4()
                key = JobKeys(job_id).input
                await store.put_file(key, clip.path, "video/mp4")
                await pool.execute(
                    "INSERT INTO jobs (id, owner_id, source_language, input_key) VALUES ($1, $2, 'eng', $3)",
                    job_id,
                    owner,
                    key,
                )
                await pool.executemany(
                    "INSERT INTO job_targets (job_id, language) VALUES ($1, $2)",
                    [(job_id, t) for t in targets],
                )
                ids.append(job_id)
            busy0, calls0 = meter.snapshot()
            tools0, media_cpu0 = media.snapshot()
            # RSS only, once a second: PSS would walk every page of the stubs, and the sampling
            # thread would take CPU (and the GIL) from the worker running in this process.
            memory = {
                "triton": PeakMemory(tritonserver_pid(settings.model_repository), 1.0, pss=False),
                # this process alone: the stack's servers are its children too
                "worker": PeakMemory(os.getpid(), 1.0, children=False, pss=False),
            }
            for watch in memory.values():
                watch.start()
            cpu0 = time.process_time()
            started = time.perf_counter()
            try:
                for job_id in ids:
                    message = JobMessage(job_id)
                    await nc.jetstream().publish(
                        settings.jobs_subject,
                        message.to_bytes(),
                        headers={"Nats-Msg-Id": message.msg_id},
                    )
                while True:
                    done = await pool.fetchval(
                        "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status IN ('succeeded','failed','cancelled')",
                        ids,
                    )
                    if done == n:
                        break
                    if worker.done():  # a crashed worker would leave us waiting forever
                        worker.result()
                        raise RuntimeError("the worker stopped before the jobs finished")
                    await asyncio.sleep(0.2)
                wall = time.perf_counter() - started
            finally:
                peaks = {name: watch.stop() for name, watch in memory.items()}
            busy, calls = meter.snapshot()
            tools, media_cpu = media.snapshot()
            cpu = time.process_time() - cpu0
            failed = await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status <> 'succeeded'", ids
            )
            stages = await pool.fetch(
                "SELECT stage, avg(extract(epoch FROM finished_at - started_at))::float AS s"
                " FROM job_stages WHERE job_id = ANY($1) GROUP BY stage",
                ids,
            )
            return {
                "jobs": n,
                "failed": failed,
                "wall_seconds": round(wall, 2),
                "media_seconds": round(clip.duration * n, 2),
                "realtime_factor": round(clip.duration * n / wall, 3),
                "inference_busy_seconds": round(busy - busy0, 2),
                "inference_calls": calls - calls0,
                "overhead_share": round(1 - (busy - busy0) / wall, 3),
                "stage_avg_seconds": {r["stage"]: round(r["s"], 3) for r in stages},
                "media_processes_per_job": {
                    k: round((v - tools0.get(k, 0)) / n, 1) for k, v in sorted(tools.items())
                },
                "media_cpu_seconds_per_job": round((media_cpu - media_cpu0) / n, 2),
                "worker_cpu_seconds_per_job": round(cpu / n, 2),
                "memory_peak_mib": {name: asdict(peak) for name, peak in peaks.items()},
            }

        try:
            single = await batch(1)
            concurrent = await batch(args.concurrent)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            await nc.close()
            await pool.close()
        return {
            "preset": str(args.repository) if args.repository else args.preset,
            "models": models,
            "clip_seconds": clip.duration,
            "targets": targets,
            "single": single,
            "concurrent": concurrent,
            "load_average": os.getloadavg(),  # a shared machine: other work slows the wall
            "concurrent_vs_single_wall": round(
                concurrent["wall_seconds"] / single["wall_seconds"], 2
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--targets", default="spa,fra")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "large"])
    parser.add_argument(
        "--repository",
        type=Path,
        help="serve this exported repository instead of exporting --preset (real-shape models"
        " built offline: python -m bench.real_shape)",
    )
    result = asyncio.run(run(parser.parse_args()))
    print(
        f"{'':10} {'jobs':>4} {'wall s':>8} {'x realtime':>10} {'inference s':>11} {'overhead':>8}"
        f" {'media cpu s/job':>15} {'worker cpu s/job':>16} {'triton MiB':>10} {'worker MiB':>10}"
    )
    for name in ("single", "concurrent"):
        r = result[name]
        peak = r["memory_peak_mib"]  # RSS: the largest sum over the tree seen by a sample
        print(
            f"{name:10} {r['jobs']:>4} {r['wall_seconds']:>8} {r['realtime_factor']:>10} "
            f"{r['inference_busy_seconds']:>11} {r['overhead_share']:>8.1%}"
            f" {r['media_cpu_seconds_per_job']:>15} {r['worker_cpu_seconds_per_job']:>16}"
            f" {peak['triton']['rss_mib']:>10} {peak['worker']['rss_mib']:>10}"
        )
    print(
        f"{result['concurrent']['jobs']} jobs at once took {result['concurrent_vs_single_wall']}x the wall time of one"
    )
    print("stage wall seconds (1 job):", result["single"]["stage_avg_seconds"])
    print("media processes per job:", result["single"]["media_processes_per_job"])
    print("load average at the end:", os.getloadavg())
    print("saved", save("pipeline", result))


if __name__ == "__main__":
    main()
