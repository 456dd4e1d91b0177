# voice-agent server on the embedded default models (whisper tiny.en, piper joe-medium,
# Qwen2.5-Coder-1.5B on llama.cpp). The builder runs the same scripts/install.sh as a
# developer machine; llama.cpp is compiled there, portable (no -march=native).
#   docker build -t voice-agent .
#   docker run -p 8000:8000 voice-agent      # then open http://127.0.0.1:8000/

FROM python:3.11-slim-bookworm AS builder
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VOICE_AGENT_CACHE=/opt/voice-agent/cache \
    VOICE_AGENT_PORTABLE_BUILD=1 \
    VOICE_AGENT_INSTALL_TEST_DEPS=0
WORKDIR /app
COPY . .
RUN bash scripts/install.sh \
    && mkdir -p /opt/voice-agent/bin \
    && cp "$(.venv/bin/python -c 'from voice_agent.models import llama_server_path as p; print(p())')" \
       /opt/voice-agent/bin/llama-server \
    && rm -rf /opt/voice-agent/cache/llama.cpp /opt/voice-agent/cache/sdist

FROM python:3.11-slim-bookworm
ENV DEBIAN_FRONTEND=noninteractive \
    VOICE_AGENT_CACHE=/opt/voice-agent/cache \
    VOICE_AGENT_LLAMA_SERVER=/opt/voice-agent/bin/llama-server \
    PATH=/app/.venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1=1.2.* libgomp1=12.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 agent
COPY --from=builder --chown=agent:agent /app /app
COPY --from=builder --chown=agent:agent /opt/voice-agent /opt/voice-agent
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
CMD ["voice-agent", "serve", "--host", "0.0.0.0", "--port", "8000"]
