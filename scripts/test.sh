#!/usr/bin/env bash
# The whole test suite: installs what it needs, lints and type-checks, then runs every test against real servers
# that the test session starts itself (PostgreSQL, NATS JetStream, S3, Triton) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy -p polydub
exec .venv/bin/pytest "$@"
