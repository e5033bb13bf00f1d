#!/usr/bin/env bash
# Set up (or refresh) the project's virtualenv in .venv at the repo root, ready for `swarm` and the tests.
# Idempotent: a second run only re-checks. Usage: scripts/setup.sh [--verbose]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
quiet=(-q); [ "${1:-}" = "--verbose" ] && quiet=()

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: swarm needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
[ -x .venv/bin/python ] || { echo "setup: creating .venv" >&2; "$PYTHON" -m venv .venv; }
pip=(.venv/bin/python -m pip)
"${pip[@]}" install -q --upgrade pip >/dev/null 2>&1 || true

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU build on these
# machines. An already-installed torch that fits pyproject's range is kept (a GPU box brings its own).
if ! .venv/bin/python -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(not ((2, 2) <= v < (2, 15)))' 2>/dev/null; then
  echo "setup: installing torch ${SWARM_TORCH_VERSION:-2.13.0}" >&2
  "${pip[@]}" install "${quiet[@]}" "torch==${SWARM_TORCH_VERSION:-2.13.0}"
fi
echo "setup: installing swarm and its dependencies (hivemind 1.1.12, transformers, ...)" >&2
"${pip[@]}" install "${quiet[@]}" -e ".[test]"
.venv/bin/swarm --help >/dev/null
echo "swarm is installed in .venv (run: .venv/bin/swarm --help)" >&2
