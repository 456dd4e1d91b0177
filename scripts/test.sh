#!/usr/bin/env bash
# Install everything, then run lint, type checks and the whole test suite
# (unit tests and the integration tests on the real embedded models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "[test] ruff"
.venv/bin/ruff check voice_agent benchmarks tests
echo "[test] mypy --strict"
.venv/bin/mypy
echo "[test] pytest"
exec .venv/bin/python -m pytest -ra "$@"
