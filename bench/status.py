"""Status polling under load, while jobs run (issue 17, item 5): the API as it was (a key lookup and a
rate-limit write per request) against the key cache with leased tokens, one and two processes.

    python -m bench.status                         # 3 variants x 2 rounds, 30 s each, 80 pollers
    python -m bench.status --duration 20 --rounds 1 --users 60

One deployment (PostgreSQL, NATS, S3, Triton with the tiny models, ``--workers`` workers) serves
every round; only the API is restarted with each variant's settings, and the variants take turns
(round-robin) so that drift in the machine's load spreads over all of them. Each round is the
Locust ``status`` profile of ``loadtests.run`` (pollers at ``--poll-pace`` plus bursts of
submissions that keep the workers busy). Per variant: the median over rounds of the status
endpoint's requests/s and p50/p99, and the API's CPU per status request (its CPU over the round
divided by all the requests it answered). The JSON keeps every round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from bench.common import save
from loadtests.harness import deployment
from loadtests.run import RESULTS as LOAD_RESULTS
from loadtests.run import LoadOptions, LoadResult, run_locust, server_pids

STATUS = "GET /jobs/{id}"


@dataclass(frozen=True)
class Variant:
    name: str
    api_processes: int
    env: dict[str, str]


VARIANTS = (
    Variant(
        "lookup + write per request, 1 process",
        1,
        {"POLYDUB_API_KEY_CACHE_SECONDS": "0", "POLYDUB_API_RATE_LEASE_SECONDS": "0"},
    ),
    Variant("key cache + leased tokens, 1 process", 1, {}),
    Variant("key cache + leased tokens, 2 processes", 2, {}),
)


def summarise(result: LoadResult) -> dict[str, Any]:
    status = result.endpoint(STATUS)
    answered = sum(e.requests for e in result.endpoints if not e.name.startswith("GET S3"))
    duration = result.options["duration"]
    api_cpu_seconds = result.cpu_percent.get("api", 0.0) / 100.0 * duration
    return {
        "status_rps": status.rps,
        "status_p50_ms": status.p50,
        "status_p99_ms": status.p99,
        "status_failures": status.failures,
        "api_cpu_ms_per_request": 1000.0 * api_cpu_seconds / max(answered, 1),
        "api_cpu_percent": result.cpu_percent.get("api", 0.0),
        "jobs_finished_during_run": result.jobs_finished_during_run,
        "ok": result.ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=80)
    parser.add_argument("--poll-pace", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    rounds: dict[str, list[dict[str, Any]]] = {v.name: [] for v in VARIANTS}
    with deployment(model_repository=LOAD_RESULTS / "tiny_models") as deploy:
        workers = [deploy.start_worker(f"worker-{i}") for i in range(args.workers)]
        for proc in workers:
            deploy.wait_worker(proc)
        for index in range(args.rounds):
            for variant in VARIANTS:
                api = deploy.start_api(processes=variant.api_processes, env=variant.env)
                deploy.wait_api(api)
                options = LoadOptions(
                    users=args.users,
                    duration=args.duration,
                    classes=("Poller", "Burster"),
                    poll_pace=args.poll_pace,
                    reset_stats=True,
                    drain_timeout=300.0,
                )
                roles = {
                    "api": [api.pid],
                    "workers": [w.pid for w in workers],
                    "servers": server_pids(deploy),
                }
                workdir = LOAD_RESULTS / "status-bench" / f"{index}-{variant.api_processes}"
                result = run_locust(deploy, options, workdir, roles)
                api.stop()
                deploy.procs.remove(api)
                rounds[variant.name].append(summarise(result))
                print(f"round {index + 1}, {variant.name}: {rounds[variant.name][-1]}", flush=True)

    print()
    print(f"{'variant':42} {'status req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'API CPU ms/req':>15}")
    table = {}
    for name, runs in rounds.items():
        row = {
            key: statistics.median(r[key] for r in runs)
            for key in ("status_rps", "status_p50_ms", "status_p99_ms", "api_cpu_ms_per_request")
        }
        table[name] = row
        print(
            f"{name:42} {row['status_rps']:12.0f} {row['status_p50_ms']:7.0f} "
            f"{row['status_p99_ms']:7.0f} {row['api_cpu_ms_per_request']:15.2f}"
        )
    base = table[VARIANTS[0].name]["api_cpu_ms_per_request"]
    for name, row in table.items():
        print(f"  {name}: API CPU per request {row['api_cpu_ms_per_request'] / base:.2f}x baseline")
    path = save("status", {"args": vars(args), "medians": table, "rounds": rounds})
    print(f"saved {path}")
    ok = all(r["ok"] for runs in rounds.values() for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
