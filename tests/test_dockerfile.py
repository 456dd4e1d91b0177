"""The Dockerfile cannot be built here (no Docker engine), so it is linted and kept in step
with scripts/: the image is built by the same install script as a developer machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_builder_uses_the_install_script_and_a_portable_llama_build() -> None:
    builder, runtime = DOCKERFILE.split("\nFROM python:3.11-slim-bookworm\n", 1)
    assert "AS builder" in builder
    assert "RUN bash scripts/install.sh" in builder
    assert "VOICE_AGENT_PORTABLE_BUILD=1" in builder
    assert "VOICE_AGENT_INSTALL_TEST_DEPS" in (ROOT / "scripts" / "install.sh").read_text()
    assert "VOICE_AGENT_PORTABLE_BUILD" in (ROOT / "voice_agent" / "models.py").read_text()
    # the runtime stage: non-root, a health check on /healthz, the server bound for a container
    assert "USER 10001" in runtime and "useradd" in runtime
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime
    assert 'CMD ["voice-agent", "serve", "--host", "0.0.0.0", "--port", "8000"]' in runtime
    assert "VOICE_AGENT_LLAMA_SERVER=/opt/voice-agent/bin/llama-server" in runtime


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "artifacts"):
        assert entry in ignored
