#!/usr/bin/env bash
# Install everything, then run the main job: replay the bundled sample through the
# embedded pipeline and print its latency report. Extra arguments go to `voice-agent replay`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/voice-agent replay "$@"
