#!/usr/bin/env bash
# The main job end to end. Until the dubbing pipeline lands, this brings the local stack up and
# reports each server healthy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/polydub stack up
.venv/bin/polydub db migrate
.venv/bin/polydub stack status
