"""A core-only install (the Python client and ``polydub dub --api``) has no tier distributions: the
CLI still starts, and a command that needs a missing tier says which to install, in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = "import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
RUN = "sys.argv = ['polydub', *{argv!r}]\nfrom polydub.cli import main\nmain()\n"


def polydub(argv: list[str], blocked: list[str]) -> subprocess.CompletedProcess[str]:
    code = BLOCK.format(blocked=blocked) + RUN.format(argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


ALL_TIERS = ["polydub.api", "polydub.orchestrator", "polydub.export"]


def test_the_cli_starts_without_any_tier() -> None:
    result = polydub(["--help"], ALL_TIERS)
    assert result.returncode == 0, result.stderr
    assert "keys" in result.stdout and "models" in result.stdout


@pytest.mark.parametrize(
    ("argv", "dist"),
    [
        (
            ["models", "export", "--preset", "tiny", "--repository", "/nonexistent/r"],
            "polydub-export",
        ),
        (["keys", "list"], "polydub-api"),
        (["worker", "run"], "polydub-orchestrator"),
    ],
)
def test_a_command_whose_tier_is_missing_names_it(argv: list[str], dist: str) -> None:
    result = polydub(argv, ALL_TIERS)
    assert result.returncode == 2
    assert f"needs {dist}, which is not installed: pip install {dist}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
