"""End-to-end dubbing throughput: one job alone, then 8 at once, on a 60 s two-speaker clip.

Reports wall time / media duration and the share of wall time with no model inference in flight
(platform overhead: media work, storage, database, queueing). Inference time is metered on the
worker's Triton client as the union of the intervals with at least one request in flight.

    .venv/bin/python -m bench.pipeline [--concurrent 8] [--seconds 60] [--targets spa,fra]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import asyncpg

from bench.common import TEMPLATES, private_stack, save
from polydub.export.run import export_preset
from polydub.export.spec import Preset, Target
from polydub.infra.db import migrate_database
from polydub.infra.queue import connect, ensure_jobs_stream
from polydub.infra.storage import ObjectStore
from polydub.infra.triton import InferenceClient
from polydub.jobs import JobKeys, JobMessage
from polydub.orchestrator.main import run_worker
from polydub.orchestrator.services import Services
from polydub.orchestrator.worker import WorkerOptions
from polydub.samples import DEFAULT_TURNS, make_two_speaker_clip
from polydub.stack.models import loadable_models

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


async def load_models(settings: Any, preset: Preset) -> list[str]:
    await asyncio.to_thread(
        export_preset, preset, Target.CPU, settings.model_repository, templates=TEMPLATES
    )
    names, _ = loadable_models(settings.model_repository)  # graphs before BLS models
    async with InferenceClient(settings.triton_url) as triton:
        for name in names:
            await triton.load_model(name)
    return names


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with private_stack(["postgres", "nats", "s3", "triton"]) as settings:
        await migrate_database(settings)
        models = await load_models(settings, Preset(args.preset))
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
            started = time.perf_counter()
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
            busy, calls = meter.snapshot()
            failed = await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status <> 'succeeded'", ids
            )
            stages = await pool.fetch(
                "SELECT stage, avg((metrics->>'seconds')::float) AS s FROM job_stages WHERE job_id = ANY($1) GROUP BY stage",
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
            "preset": args.preset,
            "models": models,
            "clip_seconds": clip.duration,
            "targets": targets,
            "single": single,
            "concurrent": concurrent,
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
    result = asyncio.run(run(parser.parse_args()))
    print(
        f"{'':10} {'jobs':>4} {'wall s':>8} {'x realtime':>10} {'inference s':>11} {'overhead':>8}"
    )
    for name in ("single", "concurrent"):
        r = result[name]
        print(
            f"{name:10} {r['jobs']:>4} {r['wall_seconds']:>8} {r['realtime_factor']:>10} "
            f"{r['inference_busy_seconds']:>11} {r['overhead_share']:>8.1%}"
        )
    print(
        f"{result['concurrent']['jobs']} jobs at once took {result['concurrent_vs_single_wall']}x the wall time of one"
    )
    print("stage seconds (1 job):", result["single"]["stage_avg_seconds"])
    print("saved", save("pipeline", result))


if __name__ == "__main__":
    main()
