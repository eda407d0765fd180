"""A python-backend stub or a Triton killed with SIGKILL leaves its /dev/shm regions behind (16 MB
or more each, in memory; Triton does not remove a dead stub's at shutdown): every full test run
left the four of test_whisper_stub_recovery's killed stubs. The stack removes its port's regions
after it stops the server and before it starts one there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from polydub.settings import Settings
from polydub.stack import Stack
from polydub.stack.triton import shm_region_prefix
from tests.conftest import own_triton, scratch_dir

pytestmark = pytest.mark.integration


def test_the_stack_removes_its_ports_leftover_regions(stack_settings: Settings) -> None:
    root = scratch_dir("polydub-triton-shm-")
    other = Path("/dev/shm") / f"{shm_region_prefix(1)}another-servers"  # not its port
    other.write_bytes(b"\0" * 64)
    try:
        with own_triton(stack_settings, root) as settings:
            left = Path("/dev/shm") / f"{shm_region_prefix(settings.triton_http_port)}killed-stub"
            left.write_bytes(b"\0" * 64)
            Stack(settings, only=["triton"]).down()
            assert not left.exists() and other.exists()
            left.write_bytes(b"\0" * 64)
            Stack(settings, only=["triton"]).up()
            assert not left.exists() and other.exists()
    finally:
        other.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
