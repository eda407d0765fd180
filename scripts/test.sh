#!/usr/bin/env bash
# The whole test suite: installs what it needs, lints and type-checks, then runs every test against real servers
# that the test session starts itself (PostgreSQL, NATS JetStream, S3, Triton) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/typecheck.sh
exec .venv/bin/pytest "$@"
