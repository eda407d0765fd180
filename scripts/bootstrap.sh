#!/usr/bin/env bash
# Install what polydub needs on a fresh Debian 12 / Python 3.11 machine, idempotently:
# Debian packages (ffmpeg, espeak-ng, sox; chromium for the web page's browser test), a virtual
# environment in .venv with the CPU build of torch and polydub with all extras. Re-runs are
# quick: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

apt_packages=(ffmpeg espeak-ng sox python3-venv chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)

# torch first and CPU-only: a plain "pip install torch" from PyPI would pull several GB of CUDA.
# A CPU wheel on this machine's configured find-links is used when there is one (it sorts above
# the PyPI build: 2.13.0+cpu > 2.13.0); otherwise PyTorch's CPU index provides it.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  log "installing torch 2.13.0 (CPU build)"
  probe_dir=$(mktemp -d)
  if "${pip[@]}" download --no-deps --no-index -d "$probe_dir" torch==2.13.0 >/dev/null 2>&1; then
    "${pip[@]}" install torch==2.13.0
  else
    "${pip[@]}" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
  rm -rf "$probe_dir"
fi

stamp=.venv/.polydub-installed
# One distribution per tier (see pyproject.toml); re-install when any of them changes.
want=$(cat pyproject.toml serving/pyproject.toml api/pyproject.toml orchestrator/pyproject.toml \
  export/pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing polydub's distributions with all extras (editable)"
  # web-test: Playwright's Python package only; it drives Debian's /usr/bin/chromium.
  # load: locust, for the load tests (loadtests/, tests/integration/load).
  # The old single distribution linked the tiers into polydub/; remove it if a venv still has it.
  "${pip[@]}" uninstall -y polydub >/dev/null 2>&1 || true
  # constraints.txt: the versions the suite last passed with (a release of any dependency,
  # direct or not, in a fresh venv once moved a tiny model's int8 error past its test's limit
  # with no change of ours).
  "${pip[@]}" install -c constraints.txt -e ".[stack,dev,web-test,load]" -e ./serving -e ./api \
    -e ./orchestrator -e ./export 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import torch, polydub.api, polydub.export, polydub.orchestrator, polydub.serving; assert "+cpu" in torch.__version__ or not torch.cuda.is_available()'
  echo "$want" >"$stamp"
fi
log "ready: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
