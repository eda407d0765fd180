#!/usr/bin/env bash
# ruff and mypy --strict over every Python file in the tree, with no excludes.
# mypy reads the polydub.* namespace through mypy_path (pyproject.toml), so each tier's file is
# one module. Triton names every python model model.py, so those are checked one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
find . -name '*.py' -not -path './.*' -not -path './model_repository/*' -not -path './build/*' -print0 |
  xargs -0 .venv/bin/mypy
find model_repository -name '*.py' -print0 | xargs -0 -n1 .venv/bin/mypy --no-error-summary
