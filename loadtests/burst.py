"""A burst of job submissions, then wait until every job is in a terminal state: none lost.

    python -m loadtests.burst --count 1000                     # the goal (docs/reliability.md)
    python -m loadtests.burst --count 200 --time-limit 600     # bounded, with an extrapolation

Brings up a whole local deployment (as ``loadtests.run`` does), submits ``--count`` jobs of the
4 s clip as fast as ``--parallel`` connections allow (``subtitles_only`` unless ``--dub``),
then follows them until all are terminal or ``--time-limit`` passes. Reports the submission
rate and latency, processing throughput, status counts, redeliveries, and "lost": a job the API
accepted that is neither terminal nor still queued/running with its message in the stream.
Saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from loadtests.harness import deployment
from loadtests.run import RESULTS, create_keys, make_clip
from polydub.jobs import TERMINAL


async def submit_all(
    url: str, key: str, clip: bytes, count: int, parallel: int, dub: bool
) -> tuple[list[str], list[float], list[str], float]:
    """Submit ``count`` jobs; returns ids, latencies, errors and the wall time."""
    ids: list[str] = []
    latencies: list[float] = []
    errors: list[str] = []
    fields = {"target_languages": "spa", "source_language": "eng"}
    if not dub:
        fields["subtitles_only"] = "true"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300, limits=limits
    ) as http:

        async def one() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.monotonic()
                try:
                    response = await http.post(
                        "/api/v1/jobs",
                        data=fields,
                        files={"file": ("clip.mp4", clip, "video/mp4")},
                    )
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies.append(time.monotonic() - started)
                if response.status_code == 202:
                    ids.append(response.json()["id"])
                else:
                    errors.append(f"{response.status_code}: {response.text[:200]}")

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(parallel)))
    return ids, latencies, errors, time.monotonic() - started


async def follow(
    dsn: str, ids: list[str], limit: float, every: float = 10.0
) -> tuple[dict[str, int], list[tuple[float, int]], float]:
    """Poll until all ids are terminal or ``limit`` seconds; returns the final counts, the
    (seconds, terminal) curve, and the seconds taken."""
    wanted = [uuid.UUID(i) for i in ids]
    started = time.monotonic()
    curve: list[tuple[float, int]] = []
    last_print = 0.0
    while True:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY 1",
                wanted,
            )
        finally:
            await conn.close()
        counts = {r["status"]: r["n"] for r in rows}
        counts["missing"] = len(ids) - sum(counts.values())
        done = sum(counts.get(s, 0) for s in TERMINAL)
        elapsed = time.monotonic() - started
        curve.append((round(elapsed, 1), done))
        if elapsed - last_print >= every:
            print(f"  {elapsed:6.0f} s: {counts}", flush=True)
            last_print = elapsed
        if done == len(ids) or elapsed > limit:
            return counts, curve, elapsed
        await asyncio.sleep(2.0)


async def stream_state(nats_url: str, stream: str) -> dict[str, Any]:
    import nats

    from polydub.infra.queue import WORKER_CONSUMER

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        consumer = await js.consumer_info(stream, WORKER_CONSUMER)
        return {
            "stream_messages": info.state.messages,
            "consumer_pending": consumer.num_pending,
            "consumer_ack_pending": consumer.num_ack_pending,
            "consumer_redelivered": consumer.num_redelivered,
        }
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=16, help="submissions in flight")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once per worker")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--dub", action="store_true", help="full dubs, not subtitles only")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds to follow")
    parser.add_argument("--models", type=Path, default=RESULTS / "tiny_models")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)  # fmt: skip

    clip = make_clip(RESULTS / "load_clip.mp4").read_bytes()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = RESULTS / f"burst-{args.count}-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    with deployment(model_repository=args.models) as deploy:
        deploy.start_app(
            workers=args.workers, concurrency=args.concurrency, api_processes=args.api_processes
        )
        dsn = deploy.settings.postgres_dsn
        (key,) = asyncio.run(create_keys(dsn, 1))
        print(f"submitting {args.count} jobs, {args.parallel} at a time ...", flush=True)
        load_before = psutil.getloadavg()[0]
        ids, latencies, errors, submit_seconds = asyncio.run(
            submit_all(deploy.api_url, key, clip, args.count, args.parallel, args.dub)
        )
        print(
            f"accepted {len(ids)} in {submit_seconds:.1f} s ({len(ids) / submit_seconds:.1f}/s),"
            f" {len(errors)} errors; following ...",
            flush=True,
        )
        counts, curve, followed = asyncio.run(follow(dsn, ids, args.time_limit))
        queue = asyncio.run(stream_state(deploy.settings.nats_url, deploy.settings.jobs_stream))

        async def attempts() -> dict[str, Any]:
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT attempt, count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) GROUP BY 1",
                    [uuid.UUID(i) for i in ids],
                )
                span = await conn.fetchrow(
                    "SELECT min(created_at) AS first, max(finished_at) AS last FROM jobs"
                    " WHERE id = ANY($1::uuid[])",
                    [uuid.UUID(i) for i in ids],
                )
                return {
                    "attempts": {str(r["attempt"]): r["n"] for r in rows},
                    "first_created": span["first"],
                    "last_finished": span["last"],
                }
            finally:
                await conn.close()

        record = asyncio.run(attempts())
        for proc in deploy.procs:
            (workdir / f"{proc.name}.log").write_text(proc.log_text()[-200_000:])
    done = sum(counts.get(s, 0) for s in TERMINAL)
    open_jobs = counts.get("queued", 0) + counts.get("running", 0)
    # Lost: accepted, not terminal, and not waiting in the queue either.
    waiting = queue["consumer_pending"] + queue["consumer_ack_pending"]
    lost = counts.get("missing", 0) + max(open_jobs - waiting, 0)
    # Throughput over the whole run, first submission to last finish (workers start on the
    # first jobs while the burst is still being submitted).
    first, last = record["first_created"], record["last_finished"]
    span_seconds = (last - first).total_seconds() if first and last else followed
    rate = done / span_seconds if span_seconds else 0.0
    result = {
        "count": args.count,
        "accepted": len(ids),
        "submit_errors": errors[:20],
        "submit_seconds": round(submit_seconds, 1),
        "submit_per_second": round(len(ids) / submit_seconds, 2),
        "submit_latency_p50": round(statistics.median(latencies), 3) if latencies else None,
        "submit_latency_p99": round(sorted(latencies)[int(len(latencies) * 0.99) - 1], 3)
        if latencies
        else None,
        "followed_seconds": round(followed, 1),
        "by_status": counts,
        "terminal": done,
        "first_submit_to_last_finish_seconds": round(span_seconds, 1),
        "jobs_per_minute": round(rate * 60, 1),
        "extrapolated_minutes_for_all": round(len(ids) / rate / 60, 1) if rate else None,
        "queue": queue,
        "lost": lost,
        "record": record,
        "curve": curve,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "dub": args.dub,
        "host": {"cpus": psutil.cpu_count(), "load_avg_1m_before": load_before},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1, default=str))
    target = args.json or workdir / "result.json"
    target.write_text(json.dumps(result, indent=1, default=str))
    print(f"saved {target}")
    return 0 if not errors and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
