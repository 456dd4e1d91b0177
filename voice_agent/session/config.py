"""How a session behaves: end of turn, duplex, echo and noise rules, fixed lines."""

from __future__ import annotations

from dataclasses import dataclass, field

from voice_agent.session.engine import FILLERS, GOODBYE, IDLE_PROMPT
from voice_agent.session.turns import DuplexPolicy

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant speaking with a caller. Everything you write is "
    "spoken aloud by a text-to-speech voice, so answer in one to three short sentences of "
    "plain, conversational English. Never use lists, markdown, code or emoji. If you did not "
    "understand the caller, ask them to say it again."
)


@dataclass
class SessionConfig:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    vad_start_ms: int = 60
    vad_stop_ms: int = 120
    # A turn whose transcript reads as finished ends after min_silence_s of
    # silence, any other after max_silence_s. Whisper often puts a full stop at
    # a mid-sentence pause (jfk.flac: "…can do for you." at a 540 ms pause), so
    # min_silence_s stays above common pauses; on 2 cores the final STT pass
    # (~550 ms after the VAD's 120 ms) takes longer than this anyway.
    min_silence_s: float = 0.6
    max_silence_s: float = 1.0
    preroll_ms: int = 300
    max_turn_s: float = 28.0
    partial_interval_s: float = 0.8
    inbound_queue_frames: int = 500
    playout_capacity_s: float = 20.0
    paced: bool = True
    max_tool_rounds: int = 3
    preemptive: bool = True
    """Start the reply during the pause, once its transcript is in and the pause has lasted
    ``prepare_after_s``; play it once the turn is over."""
    prepare_after_s: float = 0.25
    duplex: DuplexPolicy | None = field(default_factory=DuplexPolicy)
    """Barge-in, false-interruption recovery, fillers and idle handling (None: off)."""
    echo_guard: bool = True
    """Remove the agent's own voice from the caller's input (for clients without AEC)."""
    min_speech_s: float = 0.06
    """A transcript over less speech than this (by the engine's speech detector) is noise."""
    echo_reach_s: float = 0.6
    """How long after its audio is sent an agent word can come back as echo: a caller's
    transcript is compared with the agent words sent from this long before the caller's
    turn began until now."""
    fillers: tuple[str, ...] = FILLERS
    idle_prompt: str = IDLE_PROMPT
    goodbye: str = GOODBYE
