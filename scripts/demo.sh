#!/usr/bin/env bash
# The main job end to end: install what is needed, make a two-speaker sample video and dub it
# into Spanish and French. `polydub dub` brings the local stack up (PostgreSQL, NATS, S3,
# Triton, the API and a worker); on a fresh clone the stack first exports the models (real
# checkpoints from the Hub; offline, real Whisper base and random weights for the rest, said
# loudly). The stack keeps running afterwards: `.venv/bin/polydub stack down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
out=${POLYDUB_DEMO_OUT:-demo-out}
mkdir -p "$out"
.venv/bin/polydub sample make "$out/sample.mp4"
.venv/bin/polydub dub "$out/sample.mp4" --to spa,fra --out "$out"
echo
echo "Dubbed videos, audio, subtitles, transcripts and quality reports:"
for lang in spa fra; do
  echo "  $out/$lang/  (play $out/$lang/sample.$lang.mp4)"
done
api_port=${POLYDUB_API_PORT:-8080}
echo "Web page: http://127.0.0.1:$api_port/ (API key: cat ${POLYDUB_STACK_DIR:-.stack}/cli/api-key)"
