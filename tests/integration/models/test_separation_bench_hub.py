"""The SDR benchmark on a checkpoint given by Hub id: ``bench.separation --checkpoint
polydub-test/htdemucs-tiny`` against the fake Hub exports it as HT-Demucs, serves it on Triton
and measures it (a fresh process: huggingface_hub reads ``HF_ENDPOINT`` at import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from polydub.export import htdemucs
from polydub.serving.separation import CONSISTENCY_ATOL
from tests.hub import fixtures
from tests.hub.build import HTDEMUCS
from tests.hub.fixtures import FakeHub

pytestmark = pytest.mark.integration
fake_hub = fixtures.fake_hub  # pytest finds fixtures by their name in the test module

REPO_ROOT = Path(__file__).resolve().parents[3]
# bench.separation's run without its save(): a test leaves bench/results/ alone.
RUN = """
import asyncio, json, sys
from bench.separation import main, parse_args
print(json.dumps(asyncio.run(main(parse_args(sys.argv[1:])))))
"""


def test_the_sdr_bench_takes_a_hub_id(fake_hub: FakeHub, tmp_path: Path) -> None:
    args = ["--checkpoint", HTDEMUCS, "--seconds", "3", "--mixtures", "1"]
    result = subprocess.run(
        [sys.executable, "-c", RUN, *args],
        env=fake_hub.env(tmp_path),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["notes"]["model"] == HTDEMUCS
    assert any(
        note.startswith(f"{htdemucs.MODEL}: HT-Demucs") for note in outcome["notes"]["export"]
    )
    rows = {row["separator"]: row for row in outcome["rows"]}
    for runner in ("onnxruntime", "triton"):
        row = rows[f"htdemucs {HTDEMUCS} {runner}"]
        assert row["realtime_factor"] > 0
        assert row["consistency_error"] <= CONSISTENCY_ATOL  # speech + background = the mix
        assert isinstance(row["sdr_speech_db"], float)
    # Triton and onnxruntime ran the same graph on the same mixture.
    served, local = (rows[f"htdemucs {HTDEMUCS} {r}"] for r in ("triton", "onnxruntime"))
    assert served["sdr_speech_db"] == pytest.approx(local["sdr_speech_db"], abs=0.05)
