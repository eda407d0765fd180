"""A burst of segments beyond what a client deadline allows: the work Triton does per segment, the
old client vs this one (issue 17, item 6).

The issue's measurement, at NLLB-600M shape: 48 segments sent the way the dub stage sends them
(n_best 3, default lengths), 16 answered at 58 s and 32 at 360-436 s; the client's constant
120 s deadline expired, it retried 87 times and Triton executed 135 translations for 48.

Here the tiny NLLB in a private Triton, and the same ratio of deadline to burst: each round first
runs the burst with this client (``new``: the deadline derived from the burst's work, a process
retry budget, siblings cancelled on the first error), then with the old one (``old``: one
constant per-attempt deadline of ``--constant-share`` x the new burst's wall time, 4 attempts a
request and no budget, ``asyncio.gather`` leaving the other segments running after an error),
and ``constant+budget``: this client with the old constant deadline (the retry budget and the
cancellation alone, without the derived deadline).
Triton's statistics count the requests it ran (``executed``: a request the nllb model dropped
mid-decode after a cancellation counts here too) and those it failed (``cancelled``: dropped
while queued). The per-token cost of the new deadline is measured on bursts of 8 (x4).

    .venv/bin/python -m bench.overload [--segments 48] [--rounds 3] [--constant-share 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.common import TEMPLATES, private_stack, save
from polydub.errors import PolydubError
from polydub.export.nllb import NllbExporter
from polydub.export.nllb_graphs import BLS
from polydub.export.repository import copy_templates
from polydub.export.spec import Preset, Target
from polydub.infra.triton import Deadline, InferenceClient, RetryPolicy
from polydub.orchestrator.inference.translation import TranslationClient, expected_tokens
from polydub.orchestrator.stages.dub import N_BEST  # what the dub stage asks for
from polydub.retry import RetryBudget

WORDS = [
    "the",
    "film",
    "starts",
    "at",
    "eight",
    "and",
    "we",
    "will",
    "meet",
    "again",
    "at",
    "the",
    "station",
    "tomorrow",
    "morning",
]


def texts(count: int) -> list[str]:
    return [
        " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(8 + i % 9)).capitalize() + f" {i}."
        for i in range(count)
    ]


async def counts(client: InferenceClient) -> tuple[int, int]:
    stats = await client.statistics(BLS)
    failed = stats.get("inference_stats", {}).get("fail", {}).get("count", 0)
    return int(stats.get("inference_count", 0)), int(failed)


async def settled(client: InferenceClient) -> tuple[int, int]:
    """Once nothing runs any more (old-client stragglers included): two reads 1 s apart agree."""
    last = await counts(client)
    while True:
        await asyncio.sleep(1.0)
        now = await counts(client)
        if now == last:
            return now
        last = now


async def run(url: str, system: str, segments: list[str], deadline: Deadline) -> dict[str, Any]:
    # old: no budget, only the 4 attempts; otherwise the settings' defaults
    budget = RetryBudget(1.0, 60.0, 10**9) if system == "old" else RetryBudget(0.1, 60.0, 10)
    policy = RetryPolicy(attempts=4)
    async with InferenceClient(url, retry=policy, budget=budget) as client:
        translator = TranslationClient(client, deadline=deadline)
        before = await settled(client)
        started = time.monotonic()
        error = ""
        try:
            if system != "old":
                await translator.translate_many(segments, "eng", "fra", N_BEST)
            else:
                calls = (translator.translate(t, "eng", "fra", N_BEST) for t in segments)
                await asyncio.gather(*calls)
        except PolydubError as exc:
            error = exc.code
        wall = time.monotonic() - started
        after = await settled(client)
    executed, cancelled = after[0] - before[0], after[1] - before[1]
    return {
        "system": system,
        "segments": len(segments),
        "wall_s": round(wall, 3),
        "outcome": error or "ok",
        "retries": budget.retries(),
        "refused": budget.refused,
        "executed": executed,
        "cancelled": cancelled,
        "executed_per_segment": round(executed / len(segments), 3),
    }


async def per_token(url: str, sample: list[str]) -> float:
    async with InferenceClient(url) as client:
        translator = TranslationClient(client, deadline=Deadline(600.0, 0.0))
        await translator.translate(sample[0], "eng", "fra", N_BEST)
        started = time.monotonic()
        await translator.translate_many(sample, "eng", "fra", N_BEST)
        took = time.monotonic() - started
    return took / sum(expected_tokens(t, None) for t in sample)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    segments = texts(args.segments)
    units = sum(expected_tokens(t, None) for t in segments)
    rows: list[dict[str, Any]] = []
    with private_stack(["triton"]) as settings:
        repository = settings.model_repository
        exporter = NllbExporter()
        report = exporter.export(exporter.defaults(Preset.TINY), Target.CPU, repository)
        copy_templates(TEMPLATES, repository, report.models)
        async with InferenceClient(settings.triton_url) as client:
            for model in report.models:
                await client.load_model(model)
        url = settings.triton_url
        for _ in range(args.rounds):
            cost = 4 * await per_token(url, segments[:8])
            new = await run(url, "new", segments, Deadline(0.5, cost, 600.0))
            new["deadline_s"] = round(Deadline(0.5, cost).seconds(units), 3)
            constant = args.constant_share * new["wall_s"]
            old = await run(url, "old", segments, Deadline(constant, 0.0))
            old["deadline_s"] = round(constant, 3)
            capped = await run(url, "constant+budget", segments, Deadline(constant, 0.0))
            capped["deadline_s"] = round(constant, 3)
            rows += [new, old, capped]
    summary = {}
    for system in ("new", "old", "constant+budget"):
        mine = [r for r in rows if r["system"] == system]
        summary[system] = {
            "executed_per_segment": statistics.median(r["executed_per_segment"] for r in mine),
            "retries": statistics.median(r["retries"] for r in mine),
            "failed_rounds": sum(r["outcome"] != "ok" for r in mine),
        }
    return {"args": vars(args), "rows": rows, "summary": summary}


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--segments", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--constant-share",
        type=float,
        default=0.5,
        help="the old client's constant deadline, as a share of the new burst's wall time",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    print_table(outcome["rows"])
    print(outcome["summary"])
    print(save("overload", outcome))
