#!/usr/bin/env bash
# ruff and mypy --strict over every Python file in the tree, with no excludes.
# mypy reads the polydub.* namespace through mypy_path (pyproject.toml), so each tier's file is
# one module. Triton names every python model model.py, so those are checked one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
# The files git knows or would add (what .gitignore leaves out, such as exports and benchmark
# outputs that copy the python models, is not ours to check), as ruff does.
git ls-files -z --cached --others --exclude-standard -- '*.py' ':!:model_repository/*' |
  xargs -0 .venv/bin/mypy
git ls-files -z --cached --others --exclude-standard -- 'model_repository/*.py' |
  xargs -0 -n1 .venv/bin/mypy --no-error-summary
