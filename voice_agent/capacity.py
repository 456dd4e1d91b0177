"""How many calls one box serves at once, as measured (``voice-agent bench --callers``;
the README's table): the default session limit, and the local LLM's slots with it.

Past the limit a new call is refused (WebSocket close 1013, HTTP 503, a busy signal on
Twilio) rather than slowing every call down. Measured on 2 cores; more cores are
assumed to scale it in proportion (not measured).
"""

from __future__ import annotations

import os

from voice_agent.session.engine import EngineConfig

CALLS_PER_TWO_CORES = {"fast": 4, "quality": 1}
"""The largest number of callers speaking at once whose answers came within 1.5 s (p95)
with no underrun (2026-12-04, README): the fast profile 4 (p95 1.36-1.46 s over 3 runs;
6 callers 1.81 s), the default profile 1 (2 callers 1.54 s)."""
REMOTE_LLM_CALLS_PER_TWO_CORES = 4
"""With the LLM elsewhere, STT and TTS bound it (not measured yet)."""
MAX_LLM_SLOTS = 16


def default_max_sessions(cfg: EngineConfig, cores: int | None = None) -> int:
    per_two = (
        REMOTE_LLM_CALLS_PER_TWO_CORES
        if cfg.llm_base_url
        else CALLS_PER_TWO_CORES.get(cfg.llm_profile, 1)
    )
    return max(1, per_two * max(1, (cores or os.cpu_count() or 2) // 2))


def llm_slots(max_sessions: int) -> int:
    """The local llama-server's slots for a session limit: one per call."""
    return max(1, min(max_sessions, MAX_LLM_SLOTS))
