#!/usr/bin/env bash
# Install everything, then run the server on the embedded default models:
# open http://127.0.0.1:8000/ and press "Start talking". Extra arguments go to
# `voice-agent serve` (e.g. --port 9000, --llm-profile fast).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/voice-agent serve "$@"
