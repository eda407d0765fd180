"""bench.large_size's arithmetic: the per-layer line, its residual, and the depths it accepts."""

from __future__ import annotations

import argparse

import pytest

from bench.large_size import DEPTHS, fit, parse_depths, summarize


def test_fit_reads_a_line_at_the_real_depth() -> None:
    line = fit([1, 2, 4], [3.0, 3.5, 4.5], target=32)
    assert line["fixed_gib"] == pytest.approx(2.5)
    assert line["per_layer_gib"] == pytest.approx(0.5)
    assert line["at_real_depth_gib"] == pytest.approx(18.5)
    assert line["max_residual_gib"] == pytest.approx(0.0, abs=1e-9)


def test_fit_reports_how_far_a_depth_is_off_the_line() -> None:
    line = fit([1, 2, 4], [3.0, 3.5, 5.5], target=4)
    assert line["max_residual_gib"] > 0.2
    assert line["at_real_depth_gib"] < 5.5  # least squares: the bent point pulls only part way


def test_summary_fits_only_figures_measured_at_two_depths() -> None:
    measured = {1: {"loaded": 1.0, "export peak": 5.0}, 2: {"loaded": 1.5}}
    summary = summarize("nllb", measured)
    assert summary["real_layers"] == 24
    assert set(summary["fits"]) == {"loaded"}
    assert summary["fits"]["loaded"]["at_real_depth_gib"] == pytest.approx(12.5)


def test_depths_per_family() -> None:
    assert parse_depths("nllb=2/1") == {**DEPTHS, "nllb": (1, 2)}
    for bad in ("nllb=1", "whisper=0/1", "nllb=1/1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_depths(bad)
