#!/usr/bin/env bash
# Idempotent set-up: Debian packages, then .venv with torch==2.13.0 first, then requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t APT_PACKAGES < <(grep -v '^\s*#' scripts/apt-packages.txt | grep -v '^\s*$')
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
STAMP=.venv/.requirements-installed
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$STAMP" ] || [ requirements.txt -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ app.yaml -nt "$STAMP" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first: the local CPU wheel; a bare "torch" from another package would pull CUDA builds.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -r requirements.txt
  # The project itself, editable (pyproject.toml): no PYTHONPATH needed; its version is app.yaml's.
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  touch "$STAMP"
fi
echo "setup: ready (.venv, Debian packages)"
