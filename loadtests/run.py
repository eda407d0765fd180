"""Run the Locust load test headless against a whole local deployment and report the figures.

    python -m loadtests.run                      # 60 s, 40 users, 2 workers (docs/reliability.md)
    python -m loadtests.run --profile status --users 80 --duration 60
    python -m loadtests.run --duration 20 --users 10 --json bench/results/ci.json

Brings up PostgreSQL, NATS, S3 and Triton (tiny models) on free ports, the API
(``polydub api serve``) and ``--workers`` workers (``polydub worker run``), creates API keys with
raised limits, runs ``locust --headless`` for ``--duration`` seconds, then waits until every job
the run submitted is in a terminal state. Prints requests/s and p50/p95/p99 per endpoint, the
jobs finished during the run, CPU per process role, and saves it all as JSON under bench/results/.
Exit status 1 when any request failed or any job was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from loadtests.harness import Deployment, deployment
from polydub.jobs import TERMINAL

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass
class LoadOptions:
    users: int = 40
    spawn_rate: float = 10.0
    duration: float = 60.0
    classes: tuple[str, ...] = ("Client", "Poller", "Burster")
    keys: int = 10
    poll_pace: float = 0.2
    dub_fraction: float = 0.2
    burst_size: int = 10
    burst_every: float = 15.0
    drain_timeout: float = 600.0  # after the run: until every submitted job is terminal
    target: str = "spa"
    reset_stats: bool = False  # drop the ramp-up from the figures (locust --reset-stats)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Endpoint:
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float
    max: float


@dataclass
class LoadResult:
    started: str
    options: dict[str, Any]
    endpoints: list[Endpoint]
    failures: list[dict[str, str]]
    jobs_submitted: int
    jobs_by_status: dict[str, int]
    jobs_lost: list[str]
    jobs_finished_during_run: int
    drain_seconds: float
    cpu_percent: dict[str, float]
    host: dict[str, Any]
    locust_exit: int

    @property
    def ok(self) -> bool:
        return (
            self.locust_exit == 0
            and not self.failures
            and all(e.failures == 0 for e in self.endpoints)
            and not self.jobs_lost
        )

    def endpoint(self, name: str) -> Endpoint:
        return next(e for e in self.endpoints if e.name == name)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def table(self) -> str:
        lines = [
            f"{'endpoint':44} {'reqs':>7} {'fail':>5} {'req/s':>7} {'p50':>6} {'p95':>6} "
            f"{'p99':>6} {'max':>7}  (ms)"
        ]
        for e in self.endpoints:
            lines.append(
                f"{e.name[:44]:44} {e.requests:7d} {e.failures:5d} {e.rps:7.1f} {e.p50:6.0f} "
                f"{e.p95:6.0f} {e.p99:6.0f} {e.max:7.0f}"
            )
        lines.append(
            f"jobs: {self.jobs_submitted} submitted, {self.jobs_finished_during_run} finished "
            f"during the run, by status after the drain {self.jobs_by_status}, "
            f"lost {len(self.jobs_lost)}, drained in {self.drain_seconds:.1f} s"
        )
        lines.append("CPU % (of one core) by role: " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(self.cpu_percent.items())
        ))  # fmt: skip
        return "\n".join(lines)


class CpuSampler:
    """Mean CPU (percent of one core) of each role's processes and their children."""

    def __init__(self, roles: dict[str, list[int]], interval: float = 1.0) -> None:
        self.roles = roles
        self.interval = interval
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _cpu(self, proc: psutil.Process) -> float:
        cached = self._procs.setdefault(proc.pid, proc)
        try:
            return float(cached.cpu_percent(None))
        except psutil.Error:
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for role, pids in self.roles.items():
                self.samples[role].append(
                    sum(self._cpu(p) for pid in pids for p in self._tree(pid))
                )
            self.samples["host (all)"].append(psutil.cpu_percent(None) * psutil.cpu_count())

    def start(self) -> None:
        psutil.cpu_percent(None)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        # The first sample of each process is 0 (no baseline yet): skip it.
        return {role: round(sum(v[1:]) / max(len(v) - 1, 1), 1) for role, v in self.samples.items()}


def make_clip(path: Path) -> Path:
    """A 4 s video (160x120) with one English sentence from espeak-ng over a quiet background."""
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        from tests.media import DEFAULT_TURNS, make_two_speaker_clip

        path.parent.mkdir(parents=True, exist_ok=True)
        make_two_speaker_clip(path, seconds=4.0, turns=DEFAULT_TURNS[:1])
    return path


async def create_keys(dsn: str, count: int) -> list[str]:
    from polydub.api.auth import create_key

    conn = await asyncpg.connect(dsn)
    try:
        return [
            (
                await create_key(
                    conn, f"load-{i}", rate_limit_per_minute=10_000_000, max_concurrent_jobs=100_000
                )
            ).key
            for i in range(count)
        ]
    finally:
        await conn.close()


def parse_stats(prefix: Path) -> tuple[list[Endpoint], list[dict[str, str]]]:
    endpoints = []
    with open(f"{prefix}_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"]  # the locustfile names include the method

            def num(column: str, row: dict[str, str] = row) -> float:
                value = row.get(column) or "0"
                return float(value) if value != "N/A" else 0.0

            endpoints.append(
                Endpoint(
                    name=name,
                    requests=int(num("Request Count")),
                    failures=int(num("Failure Count")),
                    rps=round(num("Requests/s"), 2),
                    p50=num("50%"),
                    p95=num("95%"),
                    p99=num("99%"),
                    max=round(num("Max Response Time"), 1),
                )
            )
    failures = []
    with open(f"{prefix}_failures.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            failures.append(
                {
                    "name": row["Name"],
                    "error": row["Error"][:300],
                    "count": row["Occurrences"],
                }
            )
    return endpoints, failures


async def drain(dsn: str, ids: list[str], limit: float) -> tuple[dict[str, int], list[str], float]:
    """Wait until every id is terminal; returns counts by status, ids not terminal (or missing)."""
    started = time.monotonic()
    wanted = [uuid.UUID(i) for i in ids]
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[])", wanted
            )
            status = {str(r["id"]): r["status"] for r in rows}
            open_ = [i for i in ids if status.get(i) not in TERMINAL]
            if not open_ or time.monotonic() - started > limit:
                counts: dict[str, int] = defaultdict(int)
                for value in status.values():
                    counts[value] += 1
                counts["missing"] = len([i for i in ids if i not in status])
                return dict(counts), open_, time.monotonic() - started
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def run_locust(
    deploy: Deployment,
    options: LoadOptions,
    workdir: Path,
    roles: dict[str, list[int]],
) -> LoadResult:
    """Run the locustfile headless against ``deploy`` (API and workers already up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = asyncio.run(create_keys(deploy.settings.postgres_dsn, options.keys))
    (workdir / "keys.json").write_text(json.dumps(keys))
    clip = make_clip(RESULTS / "load_clip.mp4")
    jobs_out = workdir / "jobs.json"
    prefix = workdir / "locust"
    env = {
        **os.environ,
        "POLYDUB_LOAD_KEYS": str(workdir / "keys.json"),
        "POLYDUB_LOAD_CLIP": str(clip),
        "POLYDUB_LOAD_JOBS_OUT": str(jobs_out),
        "POLYDUB_LOAD_TARGET": options.target,
        "POLYDUB_LOAD_POLL_PACE": str(options.poll_pace),
        "POLYDUB_LOAD_DUB_FRACTION": str(options.dub_fraction),
        "POLYDUB_LOAD_BURST_SIZE": str(options.burst_size),
        "POLYDUB_LOAD_BURST_EVERY": str(options.burst_every),
        **options.env,
    }
    argv = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
        "--headless", "--only-summary", "--skip-log-setup",
        "-u", str(options.users), "-r", str(options.spawn_rate),
        "-t", f"{int(options.duration)}s", "--stop-timeout", "10",
        "--host", deploy.api_url, "--csv", str(prefix), "--exit-code-on-error", "1",
        *(["--reset-stats"] if options.reset_stats else []),
        *options.classes,
    ]  # fmt: skip
    started = dt.datetime.now(dt.UTC)
    locust = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    sampler = CpuSampler({**roles, "locust": [locust.pid]})
    sampler.start()
    out, _ = locust.communicate(timeout=options.duration + 120)
    cpu = sampler.stop()
    ended = dt.datetime.now(dt.UTC)
    (workdir / "locust.out").write_bytes(out)
    endpoints, failures = parse_stats(prefix)
    ids: list[str] = json.loads(jobs_out.read_text()) if jobs_out.exists() else []

    async def finished() -> int:
        conn = await asyncpg.connect(deploy.settings.postgres_dsn)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE finished_at BETWEEN $1 AND $2", started, ended
            )
            return count
        finally:
            await conn.close()

    during = asyncio.run(finished())
    by_status, lost, drained = asyncio.run(
        drain(deploy.settings.postgres_dsn, ids, options.drain_timeout)
    )
    return LoadResult(
        started=started.isoformat(),
        options=asdict(options),
        endpoints=endpoints,
        failures=failures,
        jobs_submitted=len(ids),
        jobs_by_status=by_status,
        jobs_lost=lost,
        jobs_finished_during_run=during,
        drain_seconds=round(drained, 1),
        cpu_percent=cpu,
        host={"cpus": psutil.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        locust_exit=locust.returncode,
    )


def _cmdline(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def renice(pids: list[int], increment: int) -> None:
    """Lower the priority of these processes and their children (Triton's model stubs).

    With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on in
    most distributions' kernels) the CPU is first shared fairly between sessions, and a nice
    value only ranks threads within their session: Triton and every worker run in a session of
    their own (``start_new_session``), so the group's nice (``/proc/PID/autogroup``) is what
    gives the API the CPU first. Without it, renicing the threads alone changed little.
    """
    for pid in pids:
        autogroup = Path(f"/proc/{pid}/autogroup")
        with contextlib.suppress(OSError, ValueError):
            # "/autogroup-N nice K": a group's nice is set by writing the value to any member.
            current = int(autogroup.read_text().split()[-1])
            autogroup.write_text(str(min(19, current + increment)))
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                value = min(19, proc.nice() + increment)
                # setpriority on a pid sets only its main thread: the inference threads that
                # already run (onnxruntime's pools, Triton's) keep their priority unless each
                # is set; threads started later inherit it from the thread that starts them.
                for thread in proc.threads():
                    with contextlib.suppress(OSError):  # it ended meanwhile
                        os.setpriority(os.PRIO_PROCESS, thread.id, value)
        except psutil.Error:  # it ended meanwhile
            continue


def server_pids(deploy: Deployment) -> list[int]:
    if deploy.stack is None:
        return []
    pids = [deploy.stack.process(s).pid() for s in deploy.stack.servers]
    return [p for p in pids if p is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--profile",
        choices=("mixed", "status"),
        default="mixed",
        help="mixed: Client+Poller+Burster; status: Poller+Burster (status throughput)",
    )
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="jobs at once per worker")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument(
        "--nice-batch",
        type=int,
        default=0,
        help="renice Triton and the workers by this much (the API keeps its CPU "
        "share on a machine that also runs the models)",
    )
    parser.add_argument("--poll-pace", type=float, default=0.2)
    parser.add_argument("--dub-fraction", type=float, default=0.2)
    parser.add_argument("--burst-size", type=int, default=10)
    parser.add_argument("--burst-every", type=float, default=15.0)
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument(
        "--models",
        type=Path,
        default=RESULTS / "tiny_models",
        help="model repository (tiny models are exported there once)",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to save the result")
    args = parser.parse_args(argv)  # fmt: skip

    # status: pollers, with bursts of submissions so that jobs are processed meanwhile
    classes = ("Poller", "Burster") if args.profile == "status" else ("Client", "Poller", "Burster")
    options = LoadOptions(
        users=args.users,
        spawn_rate=args.spawn_rate,
        duration=args.duration,
        classes=classes,
        poll_pace=args.poll_pace,
        dub_fraction=args.dub_fraction,
        burst_size=args.burst_size,
        burst_every=args.burst_every,
        drain_timeout=args.drain_timeout,
        reset_stats=args.profile == "status",
    )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = RESULTS / f"load-{args.profile}-{stamp}"
    print(f"bringing up the stack (models in {args.models}) ...", flush=True)
    with deployment(model_repository=args.models) as deploy:
        api, workers = deploy.start_app(
            workers=args.workers, concurrency=args.concurrency, api_processes=args.api_processes
        )
        print(f"API at {deploy.api_url}, {args.workers} workers; load for {args.duration:.0f} s",
              flush=True)  # fmt: skip
        if args.nice_batch:
            triton = [p for p in server_pids(deploy) if "triton" in " ".join(_cmdline(p))]
            renice([w.pid for w in workers] + triton, args.nice_batch)
        roles = {
            "api": [api.pid],
            "workers": [w.pid for w in workers],
            "servers": server_pids(deploy),
        }
        result = run_locust(deploy, options, workdir, roles)
        for proc in deploy.procs:
            (workdir / f"{proc.name}.log").write_text(proc.log_text()[-200_000:])
    print(result.table())
    target = args.json or workdir / "result.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result.to_json(), indent=1, default=str))
    print(f"saved {target}")
    if result.failures:
        print("failures:", json.dumps(result.failures, indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
