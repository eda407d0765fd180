"""Preview ranges on the grid, and the guard that keeps an API-side cut a stream copy."""

from pathlib import Path

import pytest

from polydub.errors import InternalError
from polydub.media.preview import copy_only, cut_args, snap


@pytest.mark.parametrize(
    ("asked", "snapped"),
    [
        ((2.0, 4.0), (0.0, 5.0)),
        ((1.2, 3.9), (0.0, 5.0)),
        ((5.0, 10.0), (5.0, 10.0)),  # already on the grid
        ((6.2, 8.1), (5.0, 10.0)),
        ((4.999, 5.0), (0.0, 5.0)),
        ((10.0, 10.2), (10.0, 15.0)),
        ((3.0, 63.0), (0.0, 60.0)),  # never longer than the limit
    ],
)
def test_ranges_snap_outward_to_the_grid(
    asked: tuple[float, float], snapped: tuple[float, float]
) -> None:
    assert snap(*asked, grid=5.0, limit=60.0) == snapped


def test_a_limit_shorter_than_the_grid_still_gives_one_step() -> None:
    assert snap(1.0, 2.0, grid=5.0, limit=3.0) == (0.0, 5.0)


def test_a_cut_is_a_stream_copy(tmp_path: Path) -> None:
    args = cut_args(tmp_path / "in.mp4", tmp_path / "out.mp4", 5.0, 10.0, video=True)
    assert args[args.index("-c") + 1] == "copy" and "-ss" in args


@pytest.mark.parametrize(
    "extra",
    [
        ["-c:v", "libx264"],
        ["-c", "aac"],
        ["-vcodec", "libvpx"],
        ["-vf", "scale=640:-2"],
        ["-filter_complex", "[0:v]null"],
    ],
)
def test_anything_that_encodes_is_refused(extra: list[str]) -> None:
    with pytest.raises(InternalError):
        copy_only(["-i", "file:/x", "-c", "copy", *extra, "file:/y"])
